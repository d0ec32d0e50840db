"""The open-loop load generator, run as its own process (so it never shares a GIL with a responder):

    python -m bench.query.load URL SUBJECT RATE REQUESTS OUT [--pid ROLE=PID ...] [--grace S]

REQUESTS is a file of request bodies, one per line; request ``i`` is due at ``t0 + i / RATE``
whatever happened to earlier ones (open loop: nothing waits for a reply). OUT receives JSON: each
request's scheduled, actual send and reply times (``time.perf_counter``, seconds after ``t0``;
``null`` when no reply came), each reply's body, and the CPU seconds the processes named by
``--pid`` (and this one) used between ``t0`` and the last reply.

It speaks the NATS client protocol itself over one TCP connection (``CONNECT``, ``SUB``,
``PUB subject reply``, ``MSG``/``HMSG``, ``PING``/``PONG``) with two threads: the sender sleeps
(``time.sleep`` with 1 ns timer slack, ~0.1 ms precision) until each request is due and writes its
pre-built frame; the receiver blocks on the socket and stamps each chunk it reads the moment it arrives. An asyncio
client (nats-py) wakes its timers to the millisecond only, which would add up to a millisecond of
send lag to every request: more than the round trip being measured. Replies come to
``<inbox>.<i>``, so each is matched to its request without any bookkeeping; a no-responders status
(503) counts as a failure, not a reply.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

perf = time.perf_counter
_TICKS = os.sysconf("SC_CLK_TCK")
START_DELAY = 0.05
"""Seconds between starting the threads and the first request's due time."""


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc, None when unreadable."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(parts[11]) + int(parts[12])) / _TICKS


class Client:
    """A minimal NATS connection: enough to publish requests and read their replies."""

    def __init__(self, url: str, name: str) -> None:
        parsed = urlparse(url)
        self.sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 4222), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.write_lock = threading.Lock()
        self.buffer = bytearray()
        info = self._line()
        if not info.startswith(b"INFO "):
            raise RuntimeError(f"expected INFO from the server, got {info[:80]!r}")
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "name": name,
                   "lang": "python-raw", "version": "0", "protocol": 1}  # fmt: skip
        self.send(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")

    def send(self, data: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed the connection")
            self.buffer += chunk
        end = self.buffer.index(b"\r\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def ping(self) -> None:
        """Round trip to the server: every earlier command (SUB) has been processed."""
        self.send(b"PING\r\n")
        while True:
            line = self._line()
            if line == b"PONG":
                return
            if line.startswith(b"-ERR"):
                raise RuntimeError(line.decode(errors="replace"))


class Receiver(threading.Thread):
    """Reads replies to ``<inbox>.<i>``, stamping each with the time its chunk arrived."""

    def __init__(self, client: Client, inbox: bytes, n: int) -> None:
        super().__init__(name="receiver", daemon=True)
        self.client = client
        self.prefix = inbox + b"."
        self.arrived: list[float | None] = [None] * n
        self.bodies: list[bytes | None] = [None] * n
        self.failed: dict[int, str] = {}
        self.errors: list[str] = []
        self.answered = 0
        self.n = n
        self.done = threading.Event()
        self.last = 0.0

    def run(self) -> None:
        sock, buf = self.client.sock, self.client.buffer
        sock.settimeout(None)
        try:
            while True:
                chunk = sock.recv(1 << 16)
                now = perf()
                if not chunk:
                    return
                buf += chunk
                self._parse(buf, now)
        except OSError:
            return  # closed at the end of the run
        finally:
            self.done.set()

    def _parse(self, buf: bytearray, now: float) -> None:
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            op = buf[pos : pos + 4]
            if op == b"MSG ":
                parts = bytes(buf[pos:end]).split()
                size = int(parts[-1])
                stop = end + 2 + size
                if len(buf) < stop + 2:
                    break
                self._reply(parts[1], None, bytes(buf[end + 2 : stop]), now)
                pos = stop + 2
            elif op == b"HMSG":
                parts = bytes(buf[pos:end]).split()
                header_len, total = int(parts[-2]), int(parts[-1])
                stop = end + 2 + total
                if len(buf) < stop + 2:
                    break
                headers = bytes(buf[end + 2 : end + 2 + header_len])
                self._reply(parts[1], headers, bytes(buf[end + 2 + header_len : stop]), now)
                pos = stop + 2
            else:
                line = bytes(buf[pos:end])
                if line == b"PING":
                    self.client.send(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    self.errors.append(line.decode(errors="replace"))
                pos = end + 2
        del buf[:pos]

    def _reply(self, subject: bytes, headers: bytes | None, body: bytes, now: float) -> None:
        if not subject.startswith(self.prefix):
            return
        i = int(subject[len(self.prefix) :])
        if self.arrived[i] is not None or i in self.failed:
            return
        status = headers.split(b"\r\n", 1)[0].split() if headers else []
        if len(status) >= 2 and status[1][:1] in b"45":  # e.g. "NATS/1.0 503" (no responders)
            self.failed[i] = f"status {status[1].decode()}"
        else:
            self.arrived[i] = now
            self.bodies[i] = body
        self.last = now
        self.answered += 1
        if self.answered == self.n:
            self.done.set()


def tight_timers() -> bool:
    """Ask Linux for 1 ns timer slack (default 50 µs), so that ``time.sleep`` wakes when told."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0) == 0  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        return False


def run(url: str, subject: str, rate: float, requests: list[bytes], pids: dict[str, int], grace: float) -> dict[str, object]:
    n = len(requests)
    client = Client(url, "bench-query-load")
    inbox = b"_INBOX.bench" + secrets.token_hex(8).encode()
    client.send(b"SUB " + inbox + b".* 1\r\n")
    client.ping()  # the subscription is in place before anything is sent
    subject_b = subject.encode()
    frames = [b"PUB %s %s.%d %d\r\n%s\r\n" % (subject_b, inbox, i, len(body), body) for i, body in enumerate(requests)]
    receiver = Receiver(client, inbox, n)
    interval = 1.0 / rate
    sent: list[float] = [0.0] * n
    pids = {**pids, "load generator": os.getpid()}
    gc.collect()
    gc.freeze()
    gc.disable()  # no collector pause inside the measurement (nothing here makes reference cycles)
    receiver.start()
    tight_timers()
    cpu_before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    t0 = perf() + START_DELAY
    sleep, send = time.sleep, client.send
    for i in range(n):
        delay = t0 + i * interval - perf()
        if delay > 0:
            sleep(delay)
        send(frames[i])
        sent[i] = perf()
    receiver.done.wait(max(0.0, sent[-1] + grace - perf()))
    finished = perf()
    cpu_after = {role: cpu_seconds(pid) for role, pid in pids.items()}
    try:
        client.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    client.sock.close()
    receiver.join(5)
    cpu = {}
    for role in pids:
        before, after = cpu_before[role], cpu_after[role]
        cpu[role] = None if before is None or after is None else after - before
    return {
        "subject": subject,
        "rate": rate,
        "requests": n,
        "scheduled": [i * interval for i in range(n)],
        "sent": [s - t0 for s in sent],
        "arrived": [None if a is None else a - t0 for a in receiver.arrived],
        "bodies": [None if b is None else b.decode(errors="replace") for b in receiver.bodies],
        "failed": {str(i): why for i, why in receiver.failed.items()},
        "server_errors": receiver.errors,
        "clock_s": finished - t0,
        "last_reply_s": (receiver.last - t0) if receiver.last else None,
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query.load")
    parser.add_argument("url")
    parser.add_argument("subject")
    parser.add_argument("rate", type=float)
    parser.add_argument("requests", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--pid", action="append", default=[], metavar="ROLE=PID")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for replies after the last send")
    args = parser.parse_args(argv)
    requests = [line for line in args.requests.read_bytes().split(b"\n") if line]
    pids = {role: int(pid) for role, _, pid in (item.rpartition("=") for item in args.pid)}
    result = run(args.url, args.subject, args.rate, requests, pids, args.grace)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
