"""The server, the population, both responders and both timed runs; the figures of one run.

Everything happens on one embedded nats-server (``sync_interval: always``, as the ledger runs) in
a temporary directory:

1. this process records the population through a ``Ledger`` on the JetStream store
   (``population.populate``), then closes it;
2. ``ledger serve --nats-url URL`` starts in its own process with ``LEDGER_PERSON_KEY_SECRET``
   set (the production service: ingestion consumer, projections, ``coverage.query`` responder);
   it is ready once ``coverage.query`` answers (the contract's readiness rule): that first reply,
   about a paid person, is kept as the echo's canned reply. The clock waits until the process is
   idle (below ``IDLE_SHARE`` of a core over ``IDLE_WINDOW``: whatever it catches up at start-up,
   such as projections replaying LEDGER, is over), so the run measures the steady state. Then
   the load generator (``bench.query.load``, its own process) runs the schedule against
   ``coverage.query``, and ``ledger serve`` is stopped;
3. the echo responder (``bench.query.echo``, its own process) starts on ``bench.echo.query`` and
   the load generator runs the same request bytes against it at the same rate.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from bench.ingest.runs import _env, _tail, child, nats_server, signing_key
from bench.query import population as pop
from bench.query.load import cpu_seconds
from ledger.application import Ledger
from ledger.domain.identity import PersonKeyer
from service.bootstrap import cipher_settings, new_payload_key
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-query-person-key-secret-not-for-production"
PROJECT_SUBJECT = "coverage.query"
ECHO_SUBJECT = "bench.echo.query"
READY_TIMEOUT = 120.0
IDLE_SHARE = 0.10
"""A responder is settled once it uses less than this share of a core over ``IDLE_WINDOW``."""
IDLE_WINDOW = 1.0
SETTLE_TIMEOUT = 300.0
GRACE = 10.0
"""Seconds the load generator waits for outstanding replies after its last request."""

Log = Callable[[str], None]


# ---- figures -------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``inf`` entries are unanswered requests)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Run:
    """One open-loop run of the load generator against one responder."""

    name: str
    subject: str
    rate: float
    requests: int
    latencies_ms: list[float]
    """Per request: reply time − scheduled send time; ``inf`` when no reply came."""
    send_lag_ms: list[float]
    """Per request: actual send time − scheduled send time (the generator's own lateness)."""
    scheduled_s: list[float]
    bodies: list[str | None]
    failed: dict[str, str]
    cpu_s: dict[str, float | None]
    clock_s: float
    last_reply_s: float | None
    first_ask: list[bool] = field(default_factory=list)

    @classmethod
    def from_load(cls, name: str, raw: dict[str, Any], first_ask: list[bool]) -> Run:
        scheduled, sent, arrived = raw["scheduled"], raw["sent"], raw["arrived"]
        return cls(
            name=name,
            subject=raw["subject"],
            rate=raw["rate"],
            requests=raw["requests"],
            latencies_ms=[math.inf if a is None else 1000 * (a - s) for s, a in zip(scheduled, arrived, strict=True)],
            send_lag_ms=[1000 * (t - s) for s, t in zip(scheduled, sent, strict=True)],
            scheduled_s=scheduled,
            bodies=raw["bodies"],
            failed=raw["failed"],
            cpu_s=raw["cpu_s"],
            clock_s=raw["clock_s"],
            last_reply_s=raw["last_reply_s"],
            first_ask=first_ask,
        )

    @property
    def answered(self) -> int:
        return sum(1 for v in self.latencies_ms if v != math.inf)

    @property
    def sent_rate(self) -> float:
        """Requests sent per second (first to last send)."""
        span = self.scheduled_s[-1] + self.send_lag_ms[-1] / 1000
        return (self.requests - 1) / span if span > 0 else math.inf

    @property
    def reply_rate(self) -> float:
        """Replies per second, from the first request's due time to the last reply."""
        return self.answered / self.last_reply_s if self.last_reply_s else 0.0

    def stats(self, latencies: Sequence[float] | None = None) -> dict[str, float]:
        ordered = sorted(self.latencies_ms if latencies is None else latencies)
        return {
            "p50_ms": percentile(ordered, 0.50),
            "p90_ms": percentile(ordered, 0.90),
            "p99_ms": percentile(ordered, 0.99),
            "max_ms": ordered[-1] if ordered else math.nan,
        }

    @property
    def p99(self) -> float:
        return self.stats()["p99_ms"]

    def lag_stats(self) -> dict[str, float]:
        ordered = sorted(self.send_lag_ms)
        return {"p50_ms": percentile(ordered, 0.5), "p99_ms": percentile(ordered, 0.99), "max_ms": ordered[-1]}

    def per_second_p99(self) -> list[float]:
        """p99 of the requests due in each second of the schedule."""
        seconds: dict[int, list[float]] = {}
        for s, v in zip(self.scheduled_s, self.latencies_ms, strict=True):
            seconds.setdefault(int(s), []).append(v)
        return [percentile(sorted(seconds[k]), 0.99) for k in sorted(seconds)]

    def split_by_first_ask(self) -> tuple[list[float], list[float]]:
        """Latencies of first requests about a person, and of the others (repeats, unknown people)."""
        first = [v for v, f in zip(self.latencies_ms, self.first_ask, strict=True) if f]
        rest = [v for v, f in zip(self.latencies_ms, self.first_ask, strict=True) if not f]
        return first, rest

    def outcomes(self) -> Counter[str]:
        """Replies by kind: ``enrolled, covered``, ``not_enrolled``, ``error: reason`` ..."""
        found: Counter[str] = Counter()
        for body in self.bodies:
            if body is None:
                found["no reply"] += 1
                continue
            try:
                reply = json.loads(body)
            except ValueError:
                found["not JSON"] += 1
                continue
            if "error" in reply:
                found[f"error: {reply['error']}"] += 1
            else:
                covered = "covered" if reply.get("covered") else "not covered"
                found[f"{reply.get('status')}, {covered}"] += 1
        return found

    def as_json(self) -> dict[str, Any]:
        first, rest = self.split_by_first_ask()
        return {
            "name": self.name,
            "subject": self.subject,
            "rate_scheduled": self.rate,
            "requests": self.requests,
            "answered": self.answered,
            "failed": len(self.failed),
            "sent_per_s": self.sent_rate,
            "replies_per_s": self.reply_rate,
            "latency": _finite(self.stats()),
            "send_lag": self.lag_stats(),
            "p99_ms_per_second": [_finite_value(v) for v in self.per_second_p99()],
            "first_ask": {"requests": len(first), **_finite(self.stats(first))},
            "repeat_or_unknown": {"requests": len(rest), **_finite(self.stats(rest))},
            "outcomes": dict(self.outcomes()),
            "cpu_s": self.cpu_s,
            "clock_s": self.clock_s,
        }


def _finite_value(v: float) -> float | None:
    return None if math.isinf(v) or math.isnan(v) else v


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    return {k: _finite_value(v) for k, v in d.items()}


def _brief(run: Run) -> str:
    s = run.stats()
    shown = {k: "no reply" if math.isinf(v) else f"{v:.2f} ms" for k, v in s.items()}
    return f"{run.answered:,} of {run.requests:,} answered; p50 {shown['p50_ms']}, p99 {shown['p99_ms']}"


# ---- processes -----------------------------------------------------------------------------------


def serve_command(url: str, data_dir: Path) -> list[str]:
    entry = Path(sys.executable).with_name("ledger")
    base = [str(entry)] if entry.exists() else [sys.executable, "-m", "service.cli"]
    return [*base, "serve", "--nats-url", url, "--data-dir", str(data_dir)]


async def _first_answer(url: str, subject: str, probe: bytes, process: subprocess.Popen[bytes]) -> bytes:
    nc = await nats.connect(url, name="bench-query-ready")
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                return (await nc.request(subject, probe, timeout=2)).data
            except (NoRespondersError, NatsTimeoutError):
                pass
            if process.poll() is not None:
                raise RuntimeError(f"the responder exited ({process.returncode}) before answering {subject}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered {subject} within {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


def first_answer(url: str, subject: str, probe: bytes, process: subprocess.Popen[bytes]) -> bytes:
    """The first reply to ``probe`` on ``subject``: the responder is ready."""
    return asyncio.run(_first_answer(url, subject, probe, process))


def settle(pid: int, log: Log) -> float:
    """Wait until ``pid`` is idle (it has caught up whatever it does at start-up, e.g. projections
    replaying LEDGER); returns the seconds waited. Gives up, saying so, after ``SETTLE_TIMEOUT``."""
    started = time.monotonic()
    last = cpu_seconds(pid)
    while last is not None:
        time.sleep(IDLE_WINDOW)
        now = cpu_seconds(pid)
        if now is None or now - last < IDLE_SHARE * IDLE_WINDOW:
            break
        if time.monotonic() - started > SETTLE_TIMEOUT:
            log(f"  pid {pid} still busy after {SETTLE_TIMEOUT:.0f} s ({now - last:.2f} CPU-s a second): measuring anyway")
            break
        last = now
    return time.monotonic() - started


def load_run(
    tmp: Path, url: str, subject: str, rate: float, requests_file: Path, pids: dict[str, int], own: Callable[[int], None]
) -> dict[str, Any]:
    """The load generator, in its own process, until its last reply (or ``GRACE`` after its last request)."""
    out = tmp / f"load-{subject}.json"
    command = [sys.executable, "-m", "bench.query.load", url, subject, repr(rate), str(requests_file), str(out),
               "--grace", str(GRACE), *(f"--pid={role}={pid}" for role, pid in pids.items())]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stderr=subprocess.PIPE)
    own(process.pid)
    try:
        _, stderr = process.communicate()
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"the load generator failed ({process.returncode}):\n{stderr.decode(errors='replace')[-2000:]}")
    return json.loads(out.read_text())


# ---- the whole measurement -----------------------------------------------------------------------


@dataclass
class Measured:
    population: pop.Population
    populate_s: float
    facts: int
    events: int
    project: Run
    echo: Run
    canned_reply: bytes
    settle_s: dict[str, float]
    """Seconds each responder took to become idle after it first answered (before its clock)."""


def measure(tmp: Path, people: int, rate: float, seconds: float, log: Log, own: Callable[[int], None]) -> Measured:
    requests = max(2, round(rate * seconds))
    log(f"building {people:,} people and {requests:,} requests ...")
    population = pop.build(people, requests)
    log(population.describe())
    requests_file = tmp / "requests.jsonl"
    requests_file.write_bytes(b"\n".join(population.requests) + b"\n")
    first_ask = population.first_ask()
    probe = pop.probe_request(population)

    with nats_server(tmp / "nats", log, own) as server:
        assert server._process is not None
        server_pid = server._process.pid
        log(f"recording {people:,} people through the Ledger (ledger.batch()) ...")
        started = time.perf_counter()
        # Encrypted, as production's ledger serve is: the people recorded with the key serve reads them with.
        key = {"LEDGER_CIPHER_KEY": new_payload_key()}
        store = {"PERSISTENCE_MODULE": "ledger.jetstream", "NATS_URL": server.url, **cipher_settings(Settings.read(key, nats_url=server.url))}
        ledger = Ledger(store, keyer=PersonKeyer(SECRET.encode()))
        try:
            facts = pop.populate(ledger, population, log)
            events = ledger.recorder.max_notification_id() or 0
        finally:
            ledger.close()
        populate_s = time.perf_counter() - started
        log(f"  {facts:,} facts, {events:,} events on LEDGER in {populate_s:.1f} s")

        serve_log = tmp / "serve.log"
        env = {**_env(), "LEDGER_PERSON_KEY_SECRET": SECRET, **key, "LEDGER_SIGNING_KEY_FILE": str(signing_key(tmp))}
        with child(serve_command(server.url, tmp / "serve-data"), serve_log, env, own) as serve:
            try:
                canned = first_answer(server.url, PROJECT_SUBJECT, probe, serve)
                if b'"status"' not in canned:
                    raise RuntimeError(f"ledger serve's first answer is not a coverage reply: {canned[:300]!r}")
                log(f"ledger serve (pid {serve.pid}) answers {PROJECT_SUBJECT}; waiting until it is idle ...")
                settled = {"project": settle(serve.pid, log)}
                log(f"  idle after {settled['project']:.1f} s; {rate:,.0f} requests/s for {seconds:g} s ...")
                raw = load_run(tmp, server.url, PROJECT_SUBJECT, rate, requests_file,
                               {"responder": serve.pid, "nats-server": server_pid}, own)  # fmt: skip
            except BaseException:
                log(f"ledger serve log (last lines):\n{_tail(serve_log)}")
                raise
        project = Run.from_load("ledger serve (coverage.query)", raw, first_ask)
        log(f"  {_brief(project)}")

        reply_file = tmp / "canned-reply.json"
        reply_file.write_bytes(canned)
        echo_log = tmp / "echo.log"
        echo_command = [sys.executable, "-m", "bench.query.echo", server.url, ECHO_SUBJECT, str(reply_file)]
        with child(echo_command, echo_log, _env(), own) as echo_process:
            try:
                first_answer(server.url, ECHO_SUBJECT, probe, echo_process)
                settled["echo"] = settle(echo_process.pid, log)
                log(f"echo responder (pid {echo_process.pid}) answers {ECHO_SUBJECT}; same schedule ...")
                raw = load_run(tmp, server.url, ECHO_SUBJECT, rate, requests_file,
                               {"responder": echo_process.pid, "nats-server": server_pid}, own)  # fmt: skip
            except BaseException:
                log(f"echo log (last lines):\n{_tail(echo_log)}")
                raise
        echo = Run.from_load("echo (nats-py, canned reply)", raw, first_ask)
        log(f"  {_brief(echo)}")
    return Measured(population, populate_s, facts, events, project, echo, canned, settled)
