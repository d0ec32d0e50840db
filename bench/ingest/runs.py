"""The two timed runs, each on a fresh embedded nats-server (sync always) of its own.

Both publish the same message bytes, with the same ``Nats-Msg-Id`` headers, from this process
(pipelined ``publish_async``, in windows of ``window`` acknowledgements, 2,000 by default), to a stream of UPSTREAM's
configuration, and stop the clock when the consumer's ack floor reaches the last sequence with
nothing pending or unacknowledged (``$JS.API.CONSUMER.INFO``, asked every ``POLL`` seconds once
everything is published). Only the consumer differs:

- end to end: ``ledger serve --nats-url URL --batch-size B`` in its own process (the production
  service: FastStream pull consumer, decode, ledger decisions, atomic saves to LEDGER, acks);
- raw ceiling: ``bench.ingest.raw_consumer`` in its own process, the same consumer settings,
  fetching and acknowledging with nats-py, no domain work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats

from bench.ingest.population import Message
from consumers.streams import ensure_ingest_streams
from contract.subjects import UPSTREAM_STREAM
from ledger.jetstream.server import EmbeddedNatsServer
from service.bootstrap import new_payload_key

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bench-ingest-person-key-secret-not-for-production"
WINDOW = 2000
"""Publishes in flight before waiting for their acknowledgements (as ``ledger publish`` does)."""
POLL = 0.01
SERVE_DURABLE = "ledger-ingest"
RAW_STREAM = UPSTREAM_STREAM
RAW_DURABLE = "raw-ingest"
DRAIN_TIMEOUT = 600.0

_TICKS = os.sysconf("SC_CLK_TCK")
_decode = msgspec.json.decode
perf = time.perf_counter
Log = Callable[[str], None]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc, None when unreadable."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(parts[11]) + int(parts[12])) / _TICKS


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Run:
    """One timed run: ``messages`` published and all acknowledged by the consumer."""

    name: str
    messages: int
    publish_s: float
    total_s: float
    cpu_s: dict[str, float | None] = field(default_factory=dict)
    """CPU seconds used during the clock by: consumer, nats-server, publisher (this process)."""
    streams: dict[str, int] = field(default_factory=dict)
    """Messages on each stream afterwards."""
    consumer_report: dict[str, int] = field(default_factory=dict)
    """What the consumer process said about itself when stopped."""
    acked_when_published: int = 0
    """Messages the consumer had acknowledged (ack floor) when the last publish was acknowledged."""

    @property
    def rate(self) -> float:
        return self.messages / self.total_s if self.total_s > 0 else float("inf")

    @property
    def publish_rate(self) -> float:
        return self.messages / self.publish_s if self.publish_s > 0 else float("inf")

    @property
    def rate_while_publishing(self) -> float:
        return self.acked_when_published / self.publish_s if self.publish_s > 0 else float("inf")

    @property
    def rate_after_publishing(self) -> float | None:
        rest, seconds = self.messages - self.acked_when_published, self.total_s - self.publish_s
        return rest / seconds if rest > 0 and seconds > 0 else None

    def as_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "messages_per_s": self.rate,
            "publish_messages_per_s": self.publish_rate,
            "acked_per_s_while_publishing": self.rate_while_publishing,
            "acked_per_s_after_publishing": self.rate_after_publishing,
        }


async def api(nc: Any, subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, msgspec.json.encode(request) if request is not None else b"", timeout=10)
    return _decode(reply.data)


async def wait_for_consumer(url: str, stream: str, durable: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until the consumer ``durable`` exists on ``stream`` (the process created it)."""
    nc = await nats.connect(url, name="bench-ingest-wait")
    try:
        deadline = time.monotonic() + timeout
        while True:
            info = await api(nc, f"$JS.API.CONSUMER.INFO.{stream}.{durable}")
            if "error" not in info:
                return
            if process.poll() is not None:
                raise RuntimeError(f"the consumer process exited ({process.returncode}) before its consumer existed")
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumer {stream}/{durable} did not appear within {timeout:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def timed_publish_and_drain(
    url: str,
    messages: Sequence[Message],
    stream: str,
    durable: str,
    pids: dict[str, int],
    log: Log,
    window: int = WINDOW,
) -> tuple[float, float, int, dict[str, float | None]]:
    """Publish everything (the clock starts at the first publish), then poll the consumer until
    every message is acknowledged. Returns (publish seconds, total seconds, messages acknowledged
    when publishing ended, CPU seconds by role)."""
    nc = await nats.connect(url, name="bench-ingest-publisher")
    try:
        js = nc.jetstream()
        info = await api(nc, f"$JS.API.STREAM.INFO.{stream}")
        first_seq = int(info["state"]["last_seq"]) + 1
        pids = {**pids, "publisher": os.getpid()}
        cpu_before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        publish_async = js.publish_async
        gather = asyncio.gather
        last_seq = 0
        started = perf()
        pending = []
        for m in messages:
            pending.append(await publish_async(m.subject, m.data, headers=m.headers))
            if len(pending) >= window:
                acks = await gather(*pending)
                last_seq = acks[-1].seq
                pending = []
        if pending:
            acks = await gather(*pending)
            last_seq = acks[-1].seq
        published = perf()
        if last_seq - first_seq + 1 != len(messages):
            raise RuntimeError(
                f"stream {stream} took sequences {first_seq}..{last_seq} for {len(messages)} messages (duplicates?)"
            )
        deadline = published + DRAIN_TIMEOUT
        info_subject = f"$JS.API.CONSUMER.INFO.{stream}.{durable}"
        acked_when_published = None
        while True:
            info = await api(nc, info_subject)
            if "error" in info:
                raise RuntimeError(f"consumer {stream}/{durable}: {info['error']}")
            if acked_when_published is None:
                acked_when_published = max(0, int(info["ack_floor"]["stream_seq"]) - first_seq + 1)
            if info["ack_floor"]["stream_seq"] >= last_seq and info["num_ack_pending"] == 0 and info["num_pending"] == 0:
                break
            if perf() > deadline:
                raise RuntimeError(
                    f"not drained after {DRAIN_TIMEOUT:.0f} s: ack floor {info['ack_floor']['stream_seq']} of {last_seq}"
                )
            gone = [role for role, pid in pids.items() if role != "publisher" and not _alive(pid)]
            if gone:
                raise RuntimeError(f"{', '.join(gone)} exited before every message was acknowledged")
            await asyncio.sleep(POLL)
        finished = perf()
        cpu_after = {role: cpu_seconds(pid) for role, pid in pids.items()}
        cpu = {
            role: (None if cpu_before[role] is None or cpu_after[role] is None else cpu_after[role] - cpu_before[role])
            for role in pids
        }
        assert acked_when_published is not None
        log(
            f"  published in {published - started:.2f} s ({acked_when_published:,} acknowledged by then), "
            f"all acknowledged after {finished - started:.2f} s"
        )
        return published - started, finished - started, acked_when_published, cpu
    finally:
        await nc.close()


async def stream_counts(url: str, names: Sequence[str]) -> dict[str, int]:
    nc = await nats.connect(url, name="bench-ingest-info")
    try:
        counts = {}
        for name in names:
            info = await api(nc, f"$JS.API.STREAM.INFO.{name}")
            counts[name] = int(info["state"]["messages"]) if "error" not in info else -1
            if name == "LEDGER" and "error" not in info:
                # LEDGER also holds rejections and a tracking record per save: count the events.
                events = await api(nc, f"$JS.API.STREAM.INFO.{name}", {"subjects_filter": "ledger.evt.>"})
                counts["LEDGER events"] = sum((events["state"].get("subjects") or {}).values())
        return counts
    finally:
        await nc.close()


async def create_raw_stream(url: str) -> None:
    """The ingestion's own streams, as ``ledger serve`` makes them: the senders' intakes and
    UPSTREAM derived from them (the baseline's consumer reads UPSTREAM, as the ledger does)."""
    nc = await nats.connect(url, name="bench-ingest-setup")
    try:

        async def call(subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
            return await api(nc, subject, request)

        await ensure_ingest_streams(call)
    finally:
        await nc.close()


# ---- processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def nats_server(directory: Path, log: Log, own: Callable[[int], None]) -> Iterator[EmbeddedNatsServer]:
    server = EmbeddedNatsServer(directory, sync_interval="always").start()
    assert server._process is not None
    own(server._process.pid)
    log(f"  nats-server (sync always) on {server.url}, data in {directory}")
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def child(command: list[str], log_path: Path, env: dict[str, str], own: Callable[[int], None]) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` as a child process writing to ``log_path``; SIGTERM (then SIGKILL) at the end."""
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    own(process.pid)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def signing_key(directory: Path) -> Path:
    """``directory/signing-key.pem``, a signing key made for the run (serve requires one with a
    server of its own: ``LEDGER_SIGNING_KEY_FILE``)."""
    from ledger.jetstream.signing import SigningKey

    path = directory / "signing-key.pem"
    if not path.exists():
        SigningKey.create(path)
    return path


def serve_command(url: str, batch: int, data_dir: Path) -> list[str]:
    entry = Path(sys.executable).with_name("ledger")
    base = [str(entry)] if entry.exists() else [sys.executable, "-m", "service.cli"]
    return [*base, "serve", "--nats-url", url, "--batch-size", str(batch), "--data-dir", str(data_dir)]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def end_to_end(
    tmp: Path, messages: Sequence[Message], batch: int, log: Log, own: Callable[[int], None], window: int = WINDOW
) -> Run:
    """``ledger serve`` consuming UPSTREAM while this process publishes every message."""
    serve_log = tmp / "serve.log"
    with nats_server(tmp / "nats-e2e", log, own) as server:
        # Encrypted and signed, as production's ledger serve is (an external server needs both keys): the run's own.
        env = {**_env(), "LEDGER_PERSON_KEY_SECRET": SECRET, "LEDGER_CIPHER_KEY": new_payload_key(),
               "LEDGER_SIGNING_KEY_FILE": str(signing_key(tmp))}  # fmt: skip
        with child(serve_command(server.url, batch, tmp / "serve-data"), serve_log, env, own) as serve:
            try:
                asyncio.run(wait_for_consumer(server.url, "UPSTREAM", SERVE_DURABLE, serve))
                log(f"  ledger serve (pid {serve.pid}) has its consumer; publishing {len(messages):,} messages ...")
                assert server._process is not None
                publish_s, total_s, acked, cpu = asyncio.run(
                    timed_publish_and_drain(
                        server.url,
                        messages,
                        "UPSTREAM",
                        SERVE_DURABLE,
                        {"consumer": serve.pid, "nats-server": server._process.pid},
                        log,
                        window,
                    )
                )
                streams = asyncio.run(stream_counts(server.url, ("UPSTREAM", "LEDGER", "REJECTED")))
            except BaseException:
                log(f"  ledger serve log (last lines):\n{_tail(serve_log)}")
                raise
            serve.send_signal(signal.SIGTERM)
            serve.wait(30)
        report = {}
        found = re.search(r"event=stopping recorded=(\d+) rejected=(\d+)", serve_log.read_text(errors="replace"))
        if found:
            report = {"recorded": int(found[1]), "rejected": int(found[2])}
    return Run("end to end (ledger serve)", len(messages), publish_s, total_s, cpu, streams, report, acked)


def raw_ceiling(
    tmp: Path, messages: Sequence[Message], batch: int, log: Log, own: Callable[[int], None], window: int = WINDOW
) -> Run:
    """A plain pull consumer acknowledging every message, no domain work."""
    consumer_log = tmp / "raw-consumer.log"
    with nats_server(tmp / "nats-raw", log, own) as server:
        asyncio.run(create_raw_stream(server.url))
        command = [sys.executable, "-m", "bench.ingest.raw_consumer", server.url, RAW_STREAM, RAW_DURABLE, str(batch)]
        with child(command, consumer_log, _env(), own) as consumer:
            try:
                asyncio.run(wait_for_consumer(server.url, RAW_STREAM, RAW_DURABLE, consumer))
                log(f"  raw consumer (pid {consumer.pid}) ready; publishing {len(messages):,} messages ...")
                assert server._process is not None
                publish_s, total_s, acked, cpu = asyncio.run(
                    timed_publish_and_drain(
                        server.url,
                        messages,
                        RAW_STREAM,
                        RAW_DURABLE,
                        {"consumer": consumer.pid, "nats-server": server._process.pid},
                        log,
                        window,
                    )
                )
                streams = asyncio.run(stream_counts(server.url, (RAW_STREAM,)))
            except BaseException:
                log(f"  raw consumer log (last lines):\n{_tail(consumer_log)}")
                raise
            consumer.send_signal(signal.SIGTERM)
            consumer.wait(30)
        report = {}
        found = re.search(r"acked (\d+)", consumer_log.read_text(errors="replace"))
        if found:
            report = {"acked": int(found[1])}
    return Run("raw ceiling (pull + ack only)", len(messages), publish_s, total_s, cpu, streams, report, acked)
