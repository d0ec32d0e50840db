"""A fix for nats-py's ``Subscription.next_msg`` on Python 3.11, applied when imported.

nats-py waits for the next message with ``asyncio.wait_for(queue.get(), timeout)``. On Python
before 3.12, ``wait_for`` can time out just as ``get`` has taken a message from the queue and
then drops that message (CPython gh-86296). JetStream pull fetches wait this way with short
timeouts, so now and then a message the server delivered never reaches the consumer: it waits
for ``ack_wait`` to be delivered again, and the ingestion (which applies messages in stream order)
stalls behind it for that long. Measured here: 36 messages published 0.1 s apart took 10–13 s to
be acknowledged, every message then redelivered up to six times.

The replacement waits with ``asyncio.timeout``: the timer can only fire while the wait is
suspended before the message is taken, so a message is either taken and returned, or left in
the queue for the next fetch. Python 3.12 reimplemented ``wait_for`` the same way; there the
original is kept.

``tests/unit/test_dependency_internals.py`` fails when nats-py's original changes (then carry the
change over, or drop this module if it no longer waits with ``wait_for``).
"""

from __future__ import annotations

import asyncio
import sys
from uuid import uuid4

from nats import errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

_original_next_msg = Subscription.next_msg


async def _next_msg(self: Subscription, timeout: float | None = 1.0) -> Msg:
    async def timed_get() -> Msg:
        if timeout is None:
            return await self._pending_queue.get()
        async with asyncio.timeout(timeout):
            return await self._pending_queue.get()

    if self._conn.is_closed:
        raise errors.ConnectionClosedError
    if self._cb:
        raise errors.Error("nats: next_msg cannot be used in async subscriptions")
    task_name = str(uuid4())
    try:
        future = asyncio.create_task(timed_get())
        self._pending_next_msgs_calls[task_name] = future
        msg = await future
    except TimeoutError:
        if self._conn.is_closed:
            raise errors.ConnectionClosedError from None
        raise errors.TimeoutError from None
    except asyncio.CancelledError:
        if self._conn.is_closed:
            raise errors.ConnectionClosedError from None
        raise
    else:
        self._pending_size -= len(msg.data)
        self._pending_queue.task_done()
        return msg
    finally:
        self._pending_next_msgs_calls.pop(task_name, None)


def apply() -> bool:
    """Install the fix where it is needed; True if installed."""
    if sys.version_info >= (3, 12):
        return False
    Subscription.next_msg = _next_msg  # type: ignore[method-assign]  # the point: replace nats-py's method
    return True


APPLIED = apply()
