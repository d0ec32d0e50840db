"""The event store's side of "one writer": a fenced append is refused whole once another writer
claimed the tracking subject, an unanswered one is resolved by its nonce, and an append that
nobody could receive (no stream leader: "no responders") is sent again, not given up on."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from eventsourcing.persistence import StoredEvent

from ledger.jetstream.datastore import Decisions, Fence, WriterFencedError
from tests.conftest import Datastores


def event(version: int = 1) -> StoredEvent:
    return StoredEvent(uuid.uuid4(), version, "tests:Happened", b'{"n": 1}')


def decisions(fence: Fence, position: int, *rejections: str) -> Decisions:
    messages = [(f"rej.{reason}", b"{}", {}) for reason in rejections]
    return Decisions(fence=fence, position=position, body=b'{"decided": []}', messages=messages)


def test_an_append_behind_a_fence_claimed_by_a_successor_is_refused_whole(datastores: Datastores) -> None:
    """Given writer 1 appending behind its fence, when writer 2 (another connection, as another
    process) claims the same tracking subject, then writer 1's next append — events, a rejection
    and its tracking record — is refused with WriterFencedError and none of it is stored."""
    first = datastores.new()
    first.ensure_stream(first.events_spec())
    second = datastores.new_client_on(first)
    subject = first.tracking_subject("UPSTREAM")
    fence_1, fence_2 = Fence(subject, 1), Fence(subject, 2)
    assert first.claim(first.stream, fence_1) == 0
    first.append(first.stream, f"{first.prefix}.evt", [event()], decisions=decisions(fence_1, 1))
    assert second.claim(second.stream, fence_2) == 1, "the successor reads the position back"
    before = first.last_sequence(first.stream)
    with pytest.raises(WriterFencedError):
        first.append(first.stream, f"{first.prefix}.evt", [event()], decisions=decisions(fence_1, 2, "malformed"))
    assert first.last_sequence(first.stream) == before, "nothing of the fenced append was stored"
    with pytest.raises(WriterFencedError):  # and again: having seen the successor's claim changes nothing
        first.append(first.stream, f"{first.prefix}.evt", [event()], decisions=decisions(fence_1, 2))
    assert first.last_sequence(first.stream) == before
    second.append(second.stream, f"{second.prefix}.evt", [event()], decisions=decisions(fence_2, 2))
    assert second.position(second.stream, subject) == 2


def test_a_claim_racing_an_append_lands_after_it_and_reads_its_position(datastores: Datastores) -> None:
    """Given writer 1's append committed after writer 2 read the subject but before its claim,
    then the claim is retried on top of it and returns the position that append recorded."""
    first = datastores.new()
    first.ensure_stream(first.events_spec())
    second = datastores.new_client_on(first)
    subject = first.tracking_subject("UPSTREAM")
    fence_1 = Fence(subject, 1)
    first.claim(first.stream, fence_1)
    # Writer 2 has looked at the subject (as a claim does first) ...
    second.last_message(second.stream, subject)
    # ... writer 1 commits meanwhile ...
    first.append(first.stream, f"{first.prefix}.evt", [event()], decisions=decisions(fence_1, 7))
    # ... and writer 2's claim still sees it.
    assert second.claim(second.stream, Fence(subject, 2)) == 7


def test_an_append_nobody_could_receive_is_sent_again_until_the_stream_answers(datastores: Datastores) -> None:
    """Given a stream that does not answer for a moment (no responders: no stream, or a stream
    without a leader), when a save is appended, then it is sent again with back-off and commits
    once the stream is there — not reported as given up after a few attempts."""
    store = datastores.new()
    result: dict[str, object] = {}

    def append() -> None:
        try:
            result["seqs"] = store.append(store.stream, f"{store.prefix}.evt", [event()])
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=append)
    thread.start()
    time.sleep(1.5)  # the append meets "no responders" meanwhile
    assert thread.is_alive(), f"the append did not wait for the stream: {result}"
    store.ensure_stream(store.events_spec())
    thread.join(30)
    assert result.get("seqs") == [1], result
