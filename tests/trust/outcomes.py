"""Counting the outcomes of every upstream message, per UPSTREAM sequence, from LEDGER itself.

The ingestion writes, in one atomic batch with a batch's events (see issue 11):

- ``ledger.evt.<aggregate>``: the events; each event's ``source`` names the UPSTREAM sequence of
  the message that caused it (``upstream_seq``);
- ``ledger.rej.<reason>.<sender>``: one rejection per rejected message (the JSON ``Rejection`` of
  ``consumers/streams.py``), header ``Ledger-Upstream-Seq``;
- ``ledger.park.<upstream seq>``: one message per parked message;
- ``ledger.trk.Ledger.UPSTREAM``: a tracking record, headers ``Ledger-Tracking-Id`` (the highest
  UPSTREAM sequence decided so far) and ``Ledger-Writer-Epoch``, body
  ``{"epoch", "writer", "nonce", "decided": [[upstream_seq, kind, events], ...]}``.

``count_outcomes(url)`` reads all of LEDGER (batched direct gets; no consumer, nothing changed on
the server) and returns, per UPSTREAM sequence, what each of three independent sources says: the
tracking records' decisions, the rejection (and park) messages, and the events' ``upstream_seq``.
Event bodies are decoded as stored (msgspec JSON of the event's state, the ``Source`` as
``{"_type_": "ledger_source", "_data_": {...}}``): the ledger must run with payload encryption
off. Optionally REJECTED is read too (derived from LEDGER by the server: it may lag).

``assert_exactly_one_outcome(counts, upstream_last_seq)`` fails naming every sequence with no
outcome, with two or more, or whose sources disagree.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

LEDGER = "LEDGER"
UPSTREAM = "UPSTREAM"
REJECTED = "REJECTED"
PREFIX = "ledger"
TRACKING_SUBJECT = f"{PREFIX}.trk.Ledger.UPSTREAM"
TRACKING_ID = "Ledger-Tracking-Id"
WRITER_EPOCH = "Ledger-Writer-Epoch"
UPSTREAM_SEQ = "Ledger-Upstream-Seq"
TOPIC = "Ledger-Topic"

KINDS = ("recorded", "duplicate", "rejected", "parked", "conflict")
"""A decision's kind in a tracking record (``conflict``: a repeated msg_id with another body)."""

_READ_HEADERS = {"Nats-Stream", "Nats-Num-Pending", "Nats-Last-Sequence"}


@dataclass
class SeqOutcomes:
    """What LEDGER holds about one UPSTREAM sequence."""

    decided: list[tuple[str, int]] = field(default_factory=list)
    """(kind, events) of every decision of it in the tracking records."""
    epochs: list[int] = field(default_factory=list)
    """The writer epoch of each of those decisions' tracking records."""
    rejections: list[str] = field(default_factory=list)
    """Reasons of the ``ledger.rej.*`` messages naming it."""
    parked: int = 0
    """``ledger.park.<seq>`` messages."""
    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Its events, counted per (aggregate subject, event topic)."""
    rejected_stream: list[str] = field(default_factory=list)
    """Reasons of the messages on REJECTED naming it (when REJECTED was read)."""

    @property
    def event_count(self) -> int:
        return sum(self.events.values())

    @property
    def recorded_times(self) -> int:
        """How many times its events were recorded: a message decided twice writes the same
        event on the same aggregate twice."""
        return max(self.events.values(), default=0)

    @property
    def by_content(self) -> int:
        """Outcomes visible in the content: rejections, parks, recordings (a harmless duplicate
        has none: only its decision shows it)."""
        return len(self.rejections) + self.parked + self.recorded_times

    @property
    def outcomes(self) -> int:
        """The number of outcomes: its decisions when there are tracking records, and never fewer
        than the content shows."""
        return max(len(self.decided), self.by_content)

    def disagreement(self) -> str | None:
        """Why the three sources do not tell the same single story, or None."""
        if len(self.decided) != 1:
            return None  # counted as 0 or ≥ 2 outcomes
        kind, events = self.decided[0]
        want_rejections = 1 if kind in ("rejected", "conflict") else 0
        want_parked = 1 if kind == "parked" else 0
        problems = []
        if len(self.rejections) != want_rejections:
            problems.append(f"{len(self.rejections)} rejections")
        if self.parked != want_parked:
            problems.append(f"{self.parked} parked")
        if kind == "recorded":
            if self.event_count != events or self.recorded_times != 1:
                problems.append(f"{self.event_count} events ({events} decided)")
        elif self.event_count:
            problems.append(f"{self.event_count} events")
        if kind == "conflict" and self.rejections and self.rejections[0] != "msg_id_conflict":
            problems.append(f"conflict rejected as {self.rejections[0]}")
        if problems:
            return f"decided {kind}/{events}, but " + ", ".join(problems)
        return None

    @property
    def kind(self) -> str | None:
        """The single decision's kind, else what the content suggests, else None."""
        if len(self.decided) == 1:
            kind = self.decided[0][0]
            # A msg_id conflict may be decided as a rejection whose reason says so.
            return "conflict" if kind == "rejected" and self.rejections == ["msg_id_conflict"] else kind
        if self.by_content == 1:
            if self.rejections:
                return "conflict" if self.rejections[0] == "msg_id_conflict" else "rejected"
            return "parked" if self.parked else "recorded"
        return None

    @property
    def reason(self) -> str | None:
        return self.rejections[0] if len(self.rejections) == 1 else None

    def summary(self) -> dict[str, Any]:
        return {
            "decided": [list(d) for d in self.decided],
            "epochs": self.epochs,
            "rejections": self.rejections,
            "parked": self.parked,
            "events": self.event_count,
            "recorded_times": self.recorded_times,
            **({"rejected_stream": self.rejected_stream} if self.rejected_stream else {}),
        }


@dataclass
class OutcomeCounts:
    """Per UPSTREAM sequence, its outcomes; and what LEDGER held besides."""

    by_seq: dict[int, SeqOutcomes] = field(default_factory=dict)
    tracking_records: int = 0
    tracking_ids: list[int] = field(default_factory=list)
    """``Ledger-Tracking-Id`` of every tracking record, in LEDGER order."""
    epochs: list[int] = field(default_factory=list)
    """``Ledger-Writer-Epoch`` of every tracking record, in LEDGER order."""
    writers: list[str] = field(default_factory=list)
    """The ``writer`` of every tracking record, in LEDGER order."""
    events: int = 0
    unattributed_events: int = 0
    """Events whose source names no UPSTREAM sequence."""
    rejections: int = 0
    parked: int = 0
    ledger_last_seq: int = 0
    rejected_read: bool = False
    rejected_messages: int = 0

    def of(self, seq: int) -> SeqOutcomes:
        found = self.by_seq.get(seq)
        if found is None:
            found = self.by_seq[seq] = SeqOutcomes()
        return found

    def per_message(self, upstream_last_seq: int) -> Counter[int]:
        """How many sequences of 1 … upstream_last_seq have 0, 1, 2 … outcomes."""
        empty = SeqOutcomes()
        return Counter(self.by_seq.get(s, empty).outcomes for s in range(1, upstream_last_seq + 1))

    def kinds(self) -> Counter[str]:
        return Counter(o.kind or "?" for o in self.by_seq.values())

    def figures(self, upstream_last_seq: int) -> dict[str, Any]:
        """The figures a fault test reports."""
        per_message = self.per_message(upstream_last_seq)
        return {
            "upstream_messages": upstream_last_seq,
            "outcomes_per_message": {str(k): v for k, v in sorted(per_message.items())},
            "exactly_one": per_message.get(1, 0),
            "kinds": dict(sorted(self.kinds().items())),
            "tracking_records": self.tracking_records,
            "writer_epochs": sorted(set(self.epochs)),
            "writers": sorted(set(self.writers)),
            "ledger_events": self.events,
            "unattributed_events": self.unattributed_events,
            "rejections": self.rejections,
            "parked": self.parked,
            **({"rejected_stream_messages": self.rejected_messages} if self.rejected_read else {}),
        }


def problems(counts: OutcomeCounts, upstream_last_seq: int) -> dict[str, list[int]]:
    """The sequences with no outcome, with two or more, whose sources disagree, decided beyond
    UPSTREAM's end, or (when REJECTED was read) whose rejection REJECTED does not hold once."""
    empty = SeqOutcomes()
    found: dict[str, list[int]] = {"none": [], "several": [], "disagree": [], "beyond_upstream": [], "rejected_stream": []}
    for seq in range(1, upstream_last_seq + 1):
        outcome = counts.by_seq.get(seq, empty)
        n = outcome.outcomes
        if n == 0:
            found["none"].append(seq)
        elif n > 1:
            found["several"].append(seq)
        elif outcome.disagreement():
            found["disagree"].append(seq)
        if counts.rejected_read and outcome.rejections != outcome.rejected_stream:
            found["rejected_stream"].append(seq)
    found["beyond_upstream"] = sorted(s for s, o in counts.by_seq.items() if (s > upstream_last_seq or s < 1) and o.outcomes)
    return {k: v for k, v in found.items() if v}


def assert_exactly_one_outcome(counts: OutcomeCounts, upstream_last_seq: int, *, show: int = 12) -> None:
    """Fail naming every UPSTREAM sequence of 1 … ``upstream_last_seq`` with 0 or ≥ 2 outcomes
    (or whose three sources disagree), with what each source says about the first few."""
    found = problems(counts, upstream_last_seq)
    if not found:
        return
    lines = [f"not exactly one outcome per upstream message (of {upstream_last_seq}):"]
    for what, seqs in found.items():
        lines.append(f"  {what}: {len(seqs)} sequences: {_ranges(seqs)}")
        for seq in seqs[:show]:
            outcome = counts.by_seq.get(seq, SeqOutcomes())
            why = outcome.disagreement()
            lines.append(f"    {seq}: {json.dumps(outcome.summary())}" + (f"  ({why})" if why else ""))
    lines.append(f"  figures: {json.dumps(counts.figures(upstream_last_seq))}")
    raise AssertionError("\n".join(lines))


def mismatched(counts: OutcomeCounts, expected: dict[int, tuple[str, str | None]]) -> dict[int, Any]:
    """The sequences whose single outcome is not the expected (kind, rejection reason): e.g. a
    payment that arrived before its enrollment recorded instead of rejected ``no_enrollment``."""
    wrong: dict[int, Any] = {}
    for seq, (kind, reason) in expected.items():
        outcome = counts.by_seq.get(seq, SeqOutcomes())
        got = (outcome.kind, outcome.reason)
        if got != (kind, reason):
            wrong[seq] = {"expected": [kind, reason], "got": list(got), **outcome.summary()}
    return wrong


def _ranges(seqs: list[int]) -> str:
    parts: list[str] = []
    for seq in seqs:
        if parts and isinstance(parts[-1], list) and parts[-1][1] == seq - 1:
            parts[-1][1] = seq  # type: ignore[index]
        else:
            parts.append([seq, seq])  # type: ignore[arg-type]
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)  # type: ignore[misc]
    return text if len(text) < 600 else text[:600] + " …"


# ---- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes


async def read_stream(nc: Any, stream: str, first: int = 1, batch: int = 1000, timeout: float = 10.0) -> AsyncIterator[Stored]:
    """Every message of ``stream`` from ``first`` on, in order, by batched direct gets."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=queue.put)
    try:
        seq = first
        while True:
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq, "batch": batch}).encode(), reply=inbox)
            got_any = False
            while True:
                msg = await asyncio.wait_for(queue.get(), timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status in ("204", "404", "408") or "Nats-Sequence" not in headers:
                    break
                got = int(headers["Nats-Sequence"])
                got_any = True
                kept = {k: v for k, v in headers.items() if k not in _READ_HEADERS}
                yield Stored(got, headers["Nats-Subject"], kept, msg.data)
                seq = got + 1
            if not got_any:
                return
    finally:
        await sub.unsubscribe()


_decode_json = msgspec.json.Decoder().decode


def _upstream_seq_of_event(data: bytes) -> int | None:
    try:
        state = _decode_json(data)
    except msgspec.DecodeError as e:
        raise AssertionError(
            "an event body is not JSON: is payload encryption on? (the outcome counter reads events as stored)"
        ) from e
    source = state.get("source") if isinstance(state, dict) else None
    if isinstance(source, dict) and "_data_" in source:
        source = source["_data_"]
    if not isinstance(source, dict):
        return None
    seq = source.get("upstream_seq")
    return int(seq) if seq is not None else None


def _events_of(entry: Any) -> int:
    return len(entry) if isinstance(entry, list | tuple) else int(entry or 0)


async def _count(urls: list[str], *, read_rejected: bool) -> OutcomeCounts:
    import nats

    nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=2, reconnect_time_wait=0.2, error_cb=_quiet)
    counts = OutcomeCounts()
    try:
        async for m in read_stream(nc, LEDGER):
            counts.ledger_last_seq = m.seq
            subject = m.subject
            if subject.startswith(f"{PREFIX}.evt."):
                counts.events += 1
                seq = _upstream_seq_of_event(m.data)
                if seq is None:
                    counts.unattributed_events += 1
                else:
                    counts.of(seq).events[(subject, m.headers.get(TOPIC, "?"))] += 1
            elif subject == TRACKING_SUBJECT:
                counts.tracking_records += 1
                if TRACKING_ID in m.headers:
                    counts.tracking_ids.append(int(m.headers[TRACKING_ID]))
                body = _decode_json(m.data) if m.data else {}
                epoch = int(m.headers.get(WRITER_EPOCH) or body.get("epoch") or 0)
                counts.epochs.append(epoch)
                counts.writers.append(str(body.get("writer", "")))
                for entry in body.get("decided") or ():
                    seq, kind, events = int(entry[0]), str(entry[1]), _events_of(entry[2] if len(entry) > 2 else 0)
                    counts.of(seq).decided.append((kind, events))
                    counts.of(seq).epochs.append(epoch)
            elif subject.startswith(f"{PREFIX}.rej."):
                counts.rejections += 1
                reason = subject[len(f"{PREFIX}.rej.") :].split(".")[0]  # ledger.rej.<reason>.<sender>
                header = m.headers.get(UPSTREAM_SEQ)
                seq = int(header) if header is not None else int(_decode_json(m.data)["upstream_seq"])
                counts.of(seq).rejections.append(reason)
            elif subject.startswith(f"{PREFIX}.park."):
                counts.parked += 1
                counts.of(int(subject.rsplit(".", 1)[1])).parked += 1
        if read_rejected:
            counts.rejected_read = True
            async for m in read_stream(nc, REJECTED):
                counts.rejected_messages += 1
                body = _decode_json(m.data)
                counts.of(int(body["upstream_seq"])).rejected_stream.append(str(body.get("reason")))
    finally:
        await nc.close()
    return counts


def count_outcomes(url: str | Iterable[str], *, read_rejected: bool = False) -> OutcomeCounts:
    """Per UPSTREAM sequence, its outcomes as LEDGER holds them (and REJECTED, if asked: wait
    until REJECTED has caught up with LEDGER's rejections first, e.g. with ``rejected_caught_up``)."""
    urls = url.split(",") if isinstance(url, str) else list(url)
    return asyncio.run(_count(urls, read_rejected=read_rejected))


def count_subjects(url: str, stream: str, prefix: str) -> int:
    """How many messages of ``stream`` have a subject under ``prefix`` (e.g. ``ledger.rej``)."""

    async def count() -> int:
        import nats

        nc = await nats.connect(url.split(","), connect_timeout=5, max_reconnect_attempts=2, error_cb=_quiet)
        try:
            reply = await nc.request(
                f"$JS.API.STREAM.INFO.{stream}", json.dumps({"subjects_filter": f"{prefix}.>"}).encode(), timeout=10
            )
            info = json.loads(reply.data)
            if "error" in info:
                return 0
            return sum((info["state"].get("subjects") or {}).values())
        finally:
            await nc.close()

    return asyncio.run(count())


def rejected_caught_up(url: str) -> bool:
    """Whether REJECTED holds as many messages as LEDGER has rejections (it is derived from them)."""
    return count_subjects(url, REJECTED, f"{PREFIX}.rejected") >= count_subjects(url, LEDGER, f"{PREFIX}.rej")


def upstream_order(url: str) -> list[tuple[int, str, str | None]]:
    """(sequence, subject, ``Nats-Msg-Id``) of every UPSTREAM message, in order."""

    async def read() -> list[tuple[int, str, str | None]]:
        import nats

        nc = await nats.connect(url.split(","), connect_timeout=5, max_reconnect_attempts=2, error_cb=_quiet)
        try:
            return [(m.seq, m.subject, m.headers.get("Nats-Msg-Id")) async for m in read_stream(nc, UPSTREAM)]
        finally:
            await nc.close()

    return asyncio.run(read())


async def _quiet(_error: Exception) -> None:
    """nats-py would log every refused connection with a traceback."""
