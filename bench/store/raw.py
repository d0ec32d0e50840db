"""The ceiling: the same workloads done with bare nats-py on the same server, no event store.

Messages carry the same ~300-byte states on one subject per aggregate (``<prefix>.evt.<hex>``),
but no headers of the store's (no ``Nats-Msg-Id``, topic, version or expected-sequence check):
this is what JetStream itself does at best, with this Python client.

- (a) ``publish``: one request per message, waiting for its PubAck before the next;
- (b) atomic batches: ``Nats-Batch-Id`` / ``Nats-Batch-Sequence`` on every message,
  ``Nats-Batch-Commit: 1`` on the last, which alone is a request awaiting the PubAck;
- (c) read all: an ordered push consumer over the whole stream;
- (d) load: batched direct get ``{"seq": 1, "next_by_subj": S, "batch": 5}`` per subject,
  until the ``Status: 204`` end-of-batch message;
- (e) pipelined: ``js.publish_async`` of every message (each with its own reply inbox), then
  wait for all the acks.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.store.measure import Measurement

perf = time.perf_counter
_decode = msgspec.json.decode
_encode = msgspec.json.encode

RawMessage = tuple[str, bytes]
"""A subject and a payload."""


class RawJetStream:
    """A bare nats-py connection and a fresh stream (file storage, direct get, atomic batches)."""

    def __init__(self, url: str) -> None:
        self.url = url
        token = uuid.uuid4().hex[:10]
        self.stream = f"RAW{token}".upper()
        self.prefix = f"raw{token}"
        self.nc: NATS | None = None

    async def __aenter__(self) -> RawJetStream:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and create the stream."""
        self.nc = await nats.connect(self.url, name="bench-raw")
        reply = await self.api(
            f"$JS.API.STREAM.CREATE.{self.stream}",
            {
                "name": self.stream,
                "subjects": [f"{self.prefix}.>"],
                "storage": "file",
                "retention": "limits",
                "num_replicas": 1,
                "allow_direct": True,
                "allow_atomic": True,
            },
        )
        if "error" in reply:
            raise RuntimeError(f"cannot create raw stream: {reply['error']}")

    async def close(self) -> None:
        """Delete the stream and disconnect."""
        assert self.nc is not None
        await self.api(f"$JS.API.STREAM.DELETE.{self.stream}")
        await self.nc.close()

    async def api(self, subject: str, request: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.nc is not None
        msg = await self.nc.request(subject, _encode(request) if request is not None else b"", timeout=10)
        return _decode(msg.data)

    def messages(self, states: Sequence[bytes]) -> list[RawMessage]:
        """A new subject for each state."""
        return [(f"{self.prefix}.evt.{uuid.uuid4().hex}", s) for s in states]

    def aggregates(self, states: Sequence[Sequence[bytes]]) -> list[list[RawMessage]]:
        """A new subject for each group of states."""
        result = []
        for group in states:
            subject = f"{self.prefix}.evt.{uuid.uuid4().hex}"
            result.append([(subject, s) for s in group])
        return result

    # ---- workloads -----------------------------------------------------------------------------

    async def warm_up(self, messages: Sequence[RawMessage]) -> None:
        await self.single_publish(messages)

    async def single_publish(self, messages: Sequence[RawMessage]) -> Measurement:
        """(a) One request per message, awaiting each PubAck."""
        assert self.nc is not None
        request = self.nc.request
        latencies = []
        started = perf()
        for subject, data in messages:
            t = perf()
            reply = await request(subject, data, timeout=5)
            latencies.append(perf() - t)
            _check_ack(reply, 1)
        elapsed = perf() - started
        return Measurement(len(messages), elapsed, latencies_ms=[x * 1e3 for x in latencies])

    async def atomic_batches(self, batches: Sequence[Sequence[RawMessage]]) -> Measurement:
        """(b) Each batch one atomic publish; only the commit message awaits a PubAck."""
        latencies = []
        started = perf()
        for batch in batches:
            t = perf()
            await self.publish_batch(batch)
            latencies.append(perf() - t)
        elapsed = perf() - started
        return Measurement(sum(len(b) for b in batches), elapsed, latencies_ms=[x * 1e3 for x in latencies])

    async def publish_batch(self, batch: Sequence[RawMessage]) -> None:
        assert self.nc is not None
        publish = self.nc.publish
        batch_id = os.urandom(12).hex()
        last = len(batch)
        for i, (subject, data) in enumerate(batch[:-1], start=1):
            await publish(subject, data, headers={"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)})
        subject, data = batch[-1]
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(last), "Nats-Batch-Commit": "1"}
        reply = await self.nc.request(subject, data, timeout=5, headers=headers)
        _check_ack(reply, last)

    async def read_all(self) -> Measurement:
        """(c) An ordered consumer over the whole stream, until it delivered the last sequence."""
        assert self.nc is not None
        info = await self.api(f"$JS.API.STREAM.INFO.{self.stream}")
        expected = int(info["state"]["messages"])
        done = asyncio.Event()
        count = 0

        async def on_message(msg: Msg) -> None:
            nonlocal count
            count += 1
            if count >= expected:
                done.set()

        js = self.nc.jetstream()
        started = perf()
        sub = await js.subscribe(f"{self.prefix}.>", stream=self.stream, cb=on_message, ordered_consumer=True)
        await asyncio.wait_for(done.wait(), timeout=120)
        elapsed = perf() - started
        await sub.unsubscribe()
        return Measurement(count, elapsed)

    async def direct_get_loads(self, aggregates: Sequence[Sequence[RawMessage]]) -> Measurement:
        """(d) Publish the aggregates (untimed, atomic batches of whole aggregates), then load
        each subject by one batched direct get, in random order."""
        assert self.nc is not None
        per_batch = max(1, 100 // len(aggregates[0]))
        for i in range(0, len(aggregates), per_batch):
            await self.publish_batch([m for agg in aggregates[i : i + per_batch] for m in agg])

        inbox = self.nc.new_inbox()
        waiting: dict[str, tuple[list[Msg], asyncio.Future[list[Msg]]]] = {}

        async def on_reply(msg: Msg) -> None:
            got, future = waiting[msg.subject[len(inbox) + 1 :]]
            if msg.headers and "Status" in msg.headers:
                future.set_result(got)
            else:
                got.append(msg)

        sub = await self.nc.subscribe(f"{inbox}.*", cb=on_reply)
        subjects = [agg[0][0] for agg in aggregates]
        random.Random(5).shuffle(subjects)
        expected = len(aggregates[0])
        loop = asyncio.get_running_loop()
        get = f"$JS.API.DIRECT.GET.{self.stream}"
        latencies = []
        started = perf()
        for n, subject in enumerate(subjects):
            token = str(n)
            t = perf()
            future: asyncio.Future[list[Msg]] = loop.create_future()
            waiting[token] = ([], future)
            await self.nc.publish(
                get, _encode({"seq": 1, "next_by_subj": subject, "batch": expected}), reply=f"{inbox}.{token}"
            )
            got = await asyncio.wait_for(future, timeout=5)
            latencies.append(perf() - t)
            del waiting[token]
            if len(got) != expected:
                raise AssertionError(f"direct get of {subject} gave {len(got)} messages, expected {expected}")
        elapsed = perf() - started
        await sub.unsubscribe()
        return Measurement(len(subjects), elapsed, unit="aggregates", latencies_ms=[x * 1e3 for x in latencies])

    async def pipelined_publish(self, messages: Sequence[RawMessage]) -> Measurement:
        """(e) ``publish_async`` every message (nats-py keeps at most 4,000 in flight), then wait
        for every ack."""
        assert self.nc is not None
        js = self.nc.jetstream()
        await (await js.publish_async(f"{self.prefix}.warm", b"{}"))  # sets up the reply inbox, untimed
        started = perf()
        futures = [await js.publish_async(subject, data) for subject, data in messages]
        acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=120)
        elapsed = perf() - started
        if len(acks) != len(messages):
            raise AssertionError(f"{len(acks)} acks for {len(messages)} messages")
        return Measurement(len(acks), elapsed)


def _check_ack(reply: Msg, count: int) -> None:
    ack = _decode(reply.data)
    if "error" in ack:
        raise RuntimeError(f"JetStream refused the publish: {ack['error']}")
    if count > 1 and ack.get("count") != count:
        raise RuntimeError(f"atomic batch acknowledged {ack.get('count')} of {count} messages")
