"""The baseline responder, run as its own process (as ``ledger serve`` is):

    python -m bench.query.echo URL SUBJECT REPLY_FILE

A plain nats-py subscription on SUBJECT (queue group ``bench-echo``, as the ledger's responder
uses one) answering every request with the bytes of REPLY_FILE: a real coverage reply captured
from ``ledger serve``, so both responders send replies of the same size and only the work behind
them differs. No decoding, no store. Prints ``ready`` once subscribed; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import nats


async def run(url: str, subject: str, reply: bytes) -> int:
    nc = await nats.connect(url, name="bench-query-echo")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    answered = 0
    publish = nc.publish

    async def answer(msg: nats.aio.msg.Msg) -> None:
        nonlocal answered
        await publish(msg.reply, reply)
        answered += 1

    await nc.subscribe(subject, queue="bench-echo", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await stop.wait()
    print(f"answered {answered}", flush=True)
    await nc.close()
    return 0


def main(argv: list[str]) -> int:
    url, subject, reply_file = argv
    return asyncio.run(run(url, subject, Path(reply_file).read_bytes()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
