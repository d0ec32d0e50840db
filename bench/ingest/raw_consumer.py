"""The raw ceiling's consumer, run as its own process (as ``ledger serve`` is):

    python -m bench.ingest.raw_consumer URL STREAM DURABLE BATCH

A durable pull consumer on ``upstream.>`` with the ingestion consumer's settings (deliver all,
explicit ack, ``ack_wait`` 10 s, ``max_ack_pending`` = BATCH), fetching batches of BATCH and
acknowledging every message, doing nothing else. Prints ``ready`` once the consumer exists; stops
on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

FETCH_TIMEOUT = 0.05
"""Seconds a fetch waits for its batch to fill, as ``IngestSettings.fetch_timeout``."""


async def run(url: str, stream: str, durable: str, batch: int) -> int:
    nc = await nats.connect(url, name="bench-raw-consumer")
    js = nc.jetstream()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sub = await js.pull_subscribe(
        "upstream.>",
        durable=durable,
        stream=stream,
        config=ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=10.0,
            max_ack_pending=batch,
            deliver_policy=DeliverPolicy.ALL,
        ),
    )
    print("ready", flush=True)
    acked = 0
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=FETCH_TIMEOUT)
            except (TimeoutError, NatsTimeoutError):
                # nats-py raises either when a fetch times out (asyncio's from its pull loop).
                continue
            for msg in msgs:
                await msg.ack()
            acked += len(msgs)
    finally:
        print(f"acked {acked}", flush=True)
        await nc.close()  # (drain() waits forever on a pull subscription)
    return 0


def main(argv: list[str]) -> int:
    url, stream, durable, batch = argv
    return asyncio.run(run(url, stream, durable, int(batch)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
