"""``ledger demo``: a Hefei enrollment season end to end, on embedded defaults.

1. An embedded nats-server (data under ``DATA_DIR/nats``) and ``ledger serve`` in its own
   process, exactly as in production.
2. A simulated season (``season.py``) published through the upstream contract, as integrators
   would: every message on its ``upstream.*`` subject with ``Nats-Msg-Id``.
3. Progress bars while publishing, while the ledger ingests, and while the views catch up.
4. The report from the views; with ``--report FILE`` the same as an HTML page.

The state stays in ``DATA_DIR`` (``demo.json`` names what was planted), so ``ledger coverage``,
``ledger audit``, ``ledger report`` and ``ledger replay`` can be tried on it afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract.subjects import REJECTED_STREAM, UPSTREAM_STREAM, upstream_subject
from ledger.domain.identity import PersonKeyer, ResidentId
from ledger.domain.policy import RegionPolicy
from simulation.season import Message, Season, simulate

if TYPE_CHECKING:
    from nats.js.api import PubAck

MARKER = "demo.json"
COVERAGE_YEAR = 2022


class DemoError(SystemExit):
    pass


def prepare(data_dir: Path) -> None:
    """A fresh demo directory: an earlier demo's state is replaced; anything else is refused."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).exists():
            raise DemoError(
                f"{data_dir} holds something that is not a demo (no {MARKER}): choose another --data-dir"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # its secrets and a season's personal data


def run_demo(
    *,
    people: int,
    data_dir: Path,
    report_html: Path | None,
    seed: int,
    policy: RegionPolicy,
    quiet: bool = False,
    show_report: bool = True,
) -> dict[str, Any]:
    """Run the whole demo; returns its summary (also written to ``DATA_DIR/demo.json``).

    Progress goes to stderr (nothing when ``quiet``), the report to stdout (unless
    ``show_report`` is false). Interrupted (Ctrl-C: ``KeyboardInterrupt``) or failed, it stops
    ``ledger serve`` first and the nats-server last, marks ``demo.json`` ``interrupted`` or
    ``failed`` (with the stage it reached), and lets the exception go on."""
    prepare(data_dir)
    stage = ["starting"]
    _mark(data_dir, {"status": "running", "stage": stage[0], "people": people, "seed": seed})
    try:
        summary = _run(people, data_dir, report_html, seed, policy, quiet, show_report, stage)
    except KeyboardInterrupt:
        _mark(data_dir, {"status": "interrupted", "stage": stage[0], "people": people, "seed": seed})
        raise
    except BaseException as e:
        _mark(data_dir, {"status": "failed", "stage": stage[0], "error": str(e) or type(e).__name__, "people": people, "seed": seed})
        raise
    _mark(data_dir, summary)
    if show_report and not quiet:
        _next_steps(season_example=summary["example_id_number"], data_dir=data_dir)
    return summary


def _mark(data_dir: Path, state: dict[str, Any]) -> None:
    """``DATA_DIR/demo.json``: the demo's state (running, interrupted, failed) or its summary (done)."""
    (data_dir / MARKER).write_text(json.dumps(state, ensure_ascii=False, indent=2))


def _run(
    people: int, data_dir: Path, report_html: Path | None, seed: int, policy: RegionPolicy, quiet: bool,
    show_report: bool, stage: list[str],
) -> dict[str, Any]:  # fmt: skip
    from ledger.jetstream.server import EmbeddedNatsServer
    from service.bootstrap import embedded_secrets
    from service.settings import Settings

    progress = _Progress(quiet)
    stage[0] = "simulating"
    progress.say(f"simulating a season for {people:,} residents (seed {seed}) …")
    season = simulate(people, seed=seed, policy=policy)
    # The embedded setup's secrets (DATA_DIR/person-key.secret, DATA_DIR/cipher.key: payload
    # encryption is on unless LEDGER_PAYLOAD_ENCRYPTION=off), for serve and for the report.
    secrets = embedded_secrets(Settings.read(data_dir=data_dir))
    keyer = PersonKeyer(secrets["LEDGER_PERSON_KEY_SECRET"].encode())
    stage[0] = "starting nats-server"
    server = EmbeddedNatsServer(data_dir / "nats", own_session=True)
    serve = None
    try:
        server.start()
        progress.say(f"embedded nats-server: {server.url} (data in {server.data_dir})")
        stage[0] = "starting ledger serve"
        serve = _start_serve(server.url, data_dir, secrets)
        _wait(lambda: (data_dir / "serve.url").exists() or serve.poll() is not None, 120, "ledger serve to start")
        if serve.poll() is not None:
            raise DemoError(f"ledger serve stopped at start: see {data_dir / 'serve.log'}")
        stage[0] = "publishing"
        progress.say(f"publishing {len(season.messages):,} upstream messages …")
        started = time.monotonic()
        published = asyncio.run(_publish(server.url, season, progress))
        publish_seconds = time.monotonic() - started
        stage[0] = "catching up"
        caught_up_at = _catch_up(server.url, data_dir, published, progress, serve)
        catch_up_seconds = caught_up_at - (started + publish_seconds)
    finally:
        _stop(serve, server)
    stage[0] = "reporting"
    return _report(
        season, keyer, data_dir, policy, report_html, published, publish_seconds, catch_up_seconds,
        quiet=quiet or not show_report,
    )  # fmt: skip


def _stop(serve: subprocess.Popen[bytes] | None, server: Any) -> None:
    """``ledger serve`` first (gracefully: it writes its last checkpoint), the nats-server last;
    a second Ctrl-C meanwhile kills serve instead of waiting for it, and still stops the server."""
    try:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(60)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                serve.kill()
                serve.wait()
                raise
    finally:
        server.stop()


def _start_serve(url: str, data_dir: Path, secrets: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(data_dir / "serve.log", "ab")  # noqa: SIM115 - the child keeps it
    env = {**os.environ, **secrets}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--nats-url", url, "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,  # a Ctrl-C reaches the demo only, which stops serve, then the server
    )
    log.close()
    return process


async def _publish(url: str, season: Season, progress: _Progress) -> int:
    """Publish the season, each message as its sender's account import would deliver it (the
    embedded server has no accounts).

    Each sender has its own intake, and the server copies the intakes into UPSTREAM each at its
    own pace: two senders' messages published a millisecond apart may reach UPSTREAM either way
    round. In a real season facts about one person from two systems (a registration and an
    enrollment, an enrollment at the committee and a payment by WeChat, a death and a payment)
    are minutes or days apart; the demo publishes months in seconds. So it publishes in rounds
    (``_rounds``): a message whose person or cash collector last heard from another sender waits
    for the next round, and each round starts once UPSTREAM holds the one before."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    done = 0
    start = await _upstream_messages(nc)
    try:
        with progress.bar("publishing upstream messages", len(season.messages)) as advance:
            for round_ in _rounds(season.messages):
                pending: list[asyncio.Future[PubAck]] = []
                for message in round_:
                    body = json.dumps(message.body, ensure_ascii=False).encode()
                    msg_id = str(message.body.get("msg_id") or f"demo-{done + len(pending)}")
                    subject = upstream_subject(message.subject, message.sender)
                    pending.append(await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id}))
                    if len(pending) >= 1000:
                        await asyncio.gather(*pending)
                        done += len(pending)
                        advance(len(pending))
                        pending.clear()
                await asyncio.gather(*pending)
                done += len(pending)
                advance(len(pending))
                await _until_upstream_holds(nc, start + done)
    finally:
        await nc.close()
    return done


def _rounds(messages: list[Message]) -> list[list[Message]]:
    """The season's messages in rounds, each in the season's order: a message goes in the round
    of the last message about the same person or collector, or the next one when that came from
    another sender. So the messages about anyone keep their order, and those from two senders
    are a round apart."""
    last: dict[str, tuple[int, str]] = {}
    rounds: list[list[Message]] = []
    for message in messages:
        about = [str(message.body[k]) for k in ("id_number", "collector_id") if k in message.body]
        sender = message.sender
        number = max((n + (s != sender) for n, s in (last[k] for k in about if k in last)), default=0)
        while len(rounds) <= number:
            rounds.append([])
        rounds[number].append(message)
        last.update((key, (number, sender)) for key in about)
    return rounds


async def _upstream_messages(nc: Any) -> int:
    reply = await nc.request(f"$JS.API.STREAM.INFO.{UPSTREAM_STREAM}", b"", timeout=10)
    return int(json.loads(reply.data).get("state", {}).get("messages", 0))


async def _until_upstream_holds(nc: Any, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while await _upstream_messages(nc) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"UPSTREAM did not reach {count} messages in {timeout:.0f} s")
        await asyncio.sleep(0.005)


def _catch_up(url: str, data_dir: Path, published: int, progress: _Progress, serve: subprocess.Popen[bytes]) -> float:
    """Wait until every message has its outcome and the views have every event and rejection."""
    from projections.database import Database

    def ack_floor() -> int:
        info = asyncio.run(_api(url, "$JS.API.CONSUMER.INFO.UPSTREAM.ledger-ingest"))
        return int(info.get("ack_floor", {}).get("stream_seq", 0))

    upstream_end = _upstream_end(url)  # what the intakes kept (a repeated msg_id is dropped), copied into UPSTREAM
    with progress.bar("ledger ingesting", upstream_end) as advance:
        seen = 0
        while seen < upstream_end:
            if serve.poll() is not None:
                raise DemoError(f"ledger serve stopped: see {data_dir / 'serve.log'}")
            now = ack_floor()
            advance(now - seen)
            seen = now
            time.sleep(0.3)
    ledger_end = _last_event_seq(url)
    from consumers.streams import wait_for_rejected

    asyncio.run(wait_for_rejected(url))
    rejected_end = _last_seq(url, REJECTED_STREAM)
    views = data_dir / "views.sqlite"
    with progress.bar("views catching up", ledger_end) as advance:
        seen = 0
        while True:
            if serve.poll() is not None:
                raise DemoError(f"ledger serve stopped: see {data_dir / 'serve.log'}")
            positions: dict[str, int] = {}
            if views.exists():
                db = Database.open(f"sqlite:///{views.resolve()}")
                try:
                    positions = dict(db.query("SELECT application_name, notification_id FROM tracking"))
                finally:
                    db.close()
            now = int(positions.get("Ledger", 0))
            advance(now - seen)
            seen = now
            if now >= ledger_end and int(positions.get(REJECTED_STREAM, 0)) >= rejected_end:
                return time.monotonic()
            time.sleep(0.3)


def _last_event_seq(url: str) -> int:
    """The LEDGER sequence of the last event (tracking records and rejections follow events)."""
    import nats

    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            reply = await nc.request("$JS.API.DIRECT.GET.LEDGER", json.dumps({"last_by_subj": "ledger.evt.>"}).encode(), timeout=10)
            headers = reply.headers or {}  # a direct get answers with headers: the message's, or a status
            return 0 if headers.get("Status") == "404" else int(headers["Nats-Sequence"])
        finally:
            await nc.close()

    return asyncio.run(ask())


def _upstream_end(url: str, timeout: float = 120.0) -> int:
    """UPSTREAM's last sequence once it holds every message the senders' intakes hold. The server
    copies each intake into UPSTREAM a moment after the publish (a stream source): read at once,
    UPSTREAM may lack the last ones, and the demo would report before they were decided."""
    deadline = time.monotonic() + timeout
    while True:
        names = asyncio.run(_api(url, "$JS.API.STREAM.NAMES")).get("streams") or []
        intakes = [n for n in names if n.startswith(f"{UPSTREAM_STREAM}_")]
        held = sum(int(asyncio.run(_api(url, f"$JS.API.STREAM.INFO.{n}")).get("state", {}).get("messages", 0)) for n in intakes)
        state = asyncio.run(_api(url, f"$JS.API.STREAM.INFO.{UPSTREAM_STREAM}")).get("state", {})
        if int(state.get("messages", 0)) >= held or time.monotonic() > deadline:
            return int(state.get("last_seq", 0))
        time.sleep(0.1)


def _last_seq(url: str, stream: str) -> int:
    info = asyncio.run(_api(url, f"$JS.API.STREAM.INFO.{stream}"))
    return int(info.get("state", {}).get("last_seq", 0))


async def _api(url: str, subject: str) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url)
    try:
        reply = await nc.request(subject, b"", timeout=10)
        return json.loads(reply.data)
    finally:
        await nc.close()


def _report(
    season: Season,
    keyer: PersonKeyer,
    data_dir: Path,
    policy: RegionPolicy,
    report_html: Path | None,
    published: int,
    publish_seconds: float,
    catch_up_seconds: float,
    *,
    quiet: bool,
) -> dict[str, Any]:
    from datetime import date

    from projections.database import Database
    from service.demo.report import gather, print_report, write_html

    planted = []
    for case in season.planted:
        if case.subject_key_hint:
            subject = case.subject_key_hint
        else:
            assert case.id_number is not None
            subject = keyer.key_of(ResidentId.parse(case.id_number))
        planted.append((case.kind, case.rule, subject, case.description))
    db = Database.open(f"sqlite:///{(data_dir / 'views.sqlite').resolve()}")
    try:
        report = gather(
            db, policy, coverage_year=COVERAGE_YEAR, on=date(COVERAGE_YEAR, 12, 31), people=season.people,
            published=published, publish_seconds=publish_seconds, catch_up_seconds=catch_up_seconds, planted=planted,
        )  # fmt: skip
    finally:
        db.close()
    if not quiet:
        print_report(report)
    if report_html is not None:
        write_html(report, report_html)
        if not quiet:
            print(f"HTML report: {report_html}")
    return {
        "status": "done",
        "people": season.people,
        "published": published,
        "ledger_events": report.ledger_events,
        "publish_seconds": round(publish_seconds, 1),
        "catch_up_seconds": round(catch_up_seconds, 1),
        "enrolled": report.totals["enrolled"],
        "target": report.totals["target"],
        "rejections": report.rejections,
        "flags": report.flags,
        "planted": [
            {"kind": p.kind, "rule": p.rule, "subject_key": p.subject_key, "caught": p.caught} for p in report.planted
        ],
        "expected_rejections": _counts(r.reason for r in season.bad_input),
        "example_id_number": _example(season),
    }


def _counts(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def _example(season: Season) -> str:
    """A resident who paid in the period: someone worth looking up after the demo."""
    return next(
        (m.body["id_number"] for m in season.messages if m.subject == "upstream.payment.received" and "id_number" in m.body),
        "",
    )


def _next_steps(*, season_example: str, data_dir: Path) -> None:
    example = season_example or "<ID number>"
    d = f"--data-dir {data_dir}"
    print(
        f"\nThe demo's ledger stays in {data_dir}; try:\n"
        f"  .venv/bin/ledger coverage {example} \\\n      --date {COVERAGE_YEAR}-06-01 {d}\n"
        f"  .venv/bin/ledger audit {example} {d}\n"
        f"  .venv/bin/ledger report --year {COVERAGE_YEAR} --on {COVERAGE_YEAR}-01-31 \\\n      {d}\n"
        f"  .venv/bin/ledger replay {d}"
    )


class _Progress:
    """Progress bars on the terminal (rich), or nothing when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str) -> None:
        if not self.quiet:
            from service.cli.output import say

            say(text, err=True)

    def bar(self, title: str, total: int) -> Any:
        from contextlib import contextmanager

        @contextmanager
        def cm() -> Any:
            if self.quiet:
                yield lambda n: None
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            from service.cli.output import console

            columns = (TextColumn(f"{title:<30}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console(stderr=True)) as bar:
                task = bar.add_task(title, total=total)
                yield lambda n: bar.update(task, advance=n)

        return cm()


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out waiting for {what}")
        time.sleep(0.1)
