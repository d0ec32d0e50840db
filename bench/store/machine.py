"""Signs that something else ran on the machine during the benchmark (figures then disturbed).

A background thread samples, every second, the CPU time each process used since the previous
sample. CPU used by this process and the nats-servers it started is the benchmark's; CPU used by
PostgreSQL is expected while the PostgreSQL baseline runs; anything else busy (another
nats-server, pytest, a compiler...) competes with the benchmark for the machine's cores.
Linux ``/proc`` only; elsewhere it reports nothing.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_NAMED = ("nats-server", "pytest", "postgres")
EXPECTED_OTHERS = ("postgres",)
"""Processes whose CPU is the benchmark's doing (the PostgreSQL baseline's server)."""


def _cpu_seconds(pid: int) -> float | None:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(parts[11]) + int(parts[12])) / _TICKS  # utime + stime


def _name(pid: int) -> str:
    try:
        args = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return "?"
    text = " ".join(args)
    for name in _NAMED:
        if name in text:
            return name
    if not args:
        return "?"
    name = Path(args[0]).name
    if name.startswith("python"):  # name the script or module it runs
        rest = [a for a in args[1:] if not a.startswith("-")]
        name += f" {Path(rest[0]).name}" if rest else ""
    return name


class MachineWatch:
    """Samples per-process CPU in a thread between ``start()`` and ``stop()``."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.available = Path("/proc/stat").exists()
        self.own_pids = {os.getpid()}
        self.own_cpu = 0.0
        self.other_cpu: Counter[str] = Counter()
        """CPU seconds used by other processes during the run, per command name."""
        self.load_max = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add_own(self, pid: int) -> None:
        """Count ``pid`` (a server the benchmark started) as the benchmark's own."""
        self.own_pids.add(pid)

    def start(self) -> MachineWatch:
        if self.available:
            self._last = self._snapshot()
            self._thread = threading.Thread(target=self._run, name="machine-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()

    def _snapshot(self) -> dict[int, float]:
        found = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                seconds = _cpu_seconds(int(entry.name))
                if seconds is not None:
                    found[int(entry.name)] = seconds
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            self.load_max = max(self.load_max, float(Path("/proc/loadavg").read_text().split()[0]))
        except OSError:
            pass
        now = self._snapshot()
        for pid, seconds in now.items():
            used = seconds - self._last.get(pid, 0.0)  # a new process: all its time is in the run
            if used <= 0:
                continue
            if pid in self.own_pids:
                self.own_cpu += used
            else:
                self.other_cpu[_name(pid)] += used
        self._last = now

    def summary(self) -> dict[str, object]:
        return {
            "cpus": os.cpu_count(),
            "peak_load_average_1min": self.load_max,
            "cpu_seconds_benchmark": round(self.own_cpu, 1),
            "cpu_seconds_other_processes": {k: round(v, 1) for k, v in self.other_cpu.most_common() if v >= 0.5},
        }

    def disturbing_cpu(self) -> float:
        """CPU seconds used by processes that are neither the benchmark nor its baselines."""
        return sum(v for k, v in self.other_cpu.items() if k not in EXPECTED_OTHERS)

    def describe(self, elapsed: float) -> str:
        if not self.available:
            return "Machine: no /proc here, so other load was not observed."
        busy = [f"{k} {v:,.0f} s" for k, v in self.other_cpu.most_common(5) if v >= 0.5]
        foreign = self.disturbing_cpu()
        line = (
            f"Machine: {os.cpu_count()} CPUs, run took {elapsed:,.0f} s; CPU used by the benchmark and its "
            f"nats-servers {self.own_cpu:,.0f} s, by other processes {sum(self.other_cpu.values()):,.0f} s"
            f" ({', '.join(busy) or 'none to speak of'}); peak 1-min load {self.load_max:.1f}."
        )
        if foreign > 0.05 * elapsed:
            line += (
                f"\n  Other work (not PostgreSQL) used {foreign:,.0f} CPU-s, "
                f"{100 * foreign / elapsed:.0f}% of a core on average: figures may be disturbed."
            )
        return line
