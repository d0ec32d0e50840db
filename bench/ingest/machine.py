"""``bench.store``'s machine watch, with kernel threads named.

Processes with no command line are kernel threads; during this benchmark they are mostly the
block-I/O workers (``kworker/…-kblockd``, ``jbd2``) that carry out the servers' fsyncs, i.e. the
benchmark's own doing. They are shown as ``kernel threads`` and not counted as disturbing work
(the line still shows their CPU).
"""

from __future__ import annotations

from pathlib import Path

from bench.store import machine
from bench.store.machine import MachineWatch

KERNEL = "kernel threads"


def _name(pid: int) -> str:
    try:
        if not Path(f"/proc/{pid}/cmdline").read_bytes():
            return KERNEL
    except OSError:
        pass
    return machine._name(pid)


class IngestWatch(MachineWatch):
    def _sample(self) -> None:
        try:
            self.load_max = max(self.load_max, float(Path("/proc/loadavg").read_text().split()[0]))
        except OSError:
            pass
        now = self._snapshot()
        for pid, seconds in now.items():
            used = seconds - self._last.get(pid, 0.0)
            if used <= 0:
                continue
            if pid in self.own_pids:
                self.own_cpu += used
            else:
                self.other_cpu[_name(pid)] += used
        self._last = now

    def disturbing_cpu(self) -> float:
        return super().disturbing_cpu() - self.other_cpu.get(KERNEL, 0.0)
