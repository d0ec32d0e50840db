"""Every bad input a user can give ``ledger`` is one line on stderr and an exit code: 2 for a
usage error (as argparse's), 1 for anything else; never a traceback. And Ctrl-C stops a command
cleanly: exit 130, no traceback, no child process left behind.

The CLI runs as a subprocess, as a user runs it, against a small demo ledger made once here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.ingest_support import ROOT

ID = "340104197403055083"  # well-formed; the ledger need not know the person


def ledger(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "LEDGER_PERSON_KEY_SECRET", "LEDGER_VIEWS")}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished demo's ledger (the smallest season), stopped: commands start its server."""
    data_dir = tmp_path_factory.mktemp("cli") / "demo"
    run = ledger("demo", "--people", "200", "--data-dir", str(data_dir), "--format", "json", timeout=300)
    assert json.loads((data_dir / "demo.json").read_text())["status"] == "done", run.stderr[-2000:]
    return data_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    here = tmp_path_factory.mktemp("inputs")
    (here / "malformed.toml").write_text("region = [\n", encoding="utf-8")
    (here / "incomplete.toml").write_text('region = "x"\n', encoding="utf-8")
    (here / "payments.jsonl").write_text('{"msg_id": "p1"}\n', encoding="utf-8")
    (here / "not-a-dir").mkdir()
    return {"dir": here}


STOPPED = "nats://127.0.0.1:1"
"""A server that is not running: nothing listens on port 1 (a free port taken at import could be
taken again by a nats-server of another test while these run, in another worker of make test)."""

# (name, arguments; {demo} is the demo's ledger, {inputs} a directory of bad files), exit code, words in the line
CASES = [
    ("coverage: a day that does not exist", ["coverage", ID, "--date", "2022-13-01"], 2, "not a date"),
    ("report: a date that is not a date", ["report", "--on", "yesterday"], 2, "not a date"),
    ("coverage: a time without an offset", ["coverage", ID, "--as-of", "2022-01-01T00:00"], 2, "offset"),
    ("replay: a bad --until", ["replay", "--until", "soon"], 2, "not an ISO time"),
    ("report: a year that is not a number", ["report", "--year", "next"], 2, "invalid int"),
    ("demo: --people 0", ["demo", "--people", "0"], 2, "at least 200 people"),
    ("demo: --people many", ["demo", "--people", "many"], 2, "not a whole number"),
    ("an unknown command", ["bogus"], 2, "invalid choice"),
    ("an unknown option", ["status", "--colour"], 2, "unrecognized arguments"),
    ("report: an unknown district", ["report", "--district", "999999", "--data-dir", "{demo}"], 1, "unknown district"),
    ("coverage: a bad ID number", ["coverage", "123", "--data-dir", "{demo}"], 1, "invalid_id_number"),
    ("audit: a bad ID number", ["audit", "12345678901234567X", "--data-dir", "{demo}"], 1, "invalid_id_number"),
    ("coverage: no data dir", ["coverage", ID, "--data-dir", "{inputs}/missing"], 1, "no ledger in"),
    ("audit: no data dir", ["audit", ID, "--data-dir", "{inputs}/missing"], 1, "no views at"),
    ("report: no data dir", ["report", "--data-dir", "{inputs}/missing"], 1, "no views at"),
    ("replay: no data dir", ["replay", "--data-dir", "{inputs}/missing"], 1, "no ledger in"),
    ("verify: no data dir", ["verify", "--data-dir", "{inputs}/missing"], 1, "no ledger in"),
    ("status: no data dir", ["status", "--data-dir", "{inputs}/missing"], 1, "no ledger in"),
    ("parked list: no data dir", ["parked", "list", "--data-dir", "{inputs}/missing"], 1, "no ledger in"),
    ("parked retry: no data dir", ["parked", "retry", "--data-dir", "{inputs}/missing"], 1, "no running ledger serve"),
    ("publish: no data dir", ["publish", "upstream.payment.received", "{inputs}/payments.jsonl",
                              "--data-dir", "{inputs}/missing"], 1, "no NATS server"),
    ("report: views that do not exist", ["report", "--views", "sqlite:///{inputs}/none.sqlite", "--data-dir", "{demo}"],
     1, "no views at"),
    ("audit: an unsupported views URL", ["audit", ID, "--views", "mysql://db/views", "--data-dir", "{demo}"],
     1, "unsupported view database"),
    ("report: PostgreSQL that cannot connect", ["report", "--views", "postgresql://nobody@127.0.0.1:1/views",
                                                "--data-dir", "{demo}"], 1, "cannot open PostgreSQL"),
    ("report: an unreadable policy file", ["report", "--policy", "{inputs}/not-a-dir", "--data-dir", "{demo}"],
     1, "cannot be read"),
    ("report: a missing policy file", ["report", "--policy", "{inputs}/none.toml", "--data-dir", "{demo}"],
     1, "cannot be read"),
    ("coverage: a malformed policy file", ["coverage", ID, "--policy", "{inputs}/malformed.toml", "--data-dir", "{demo}"],
     1, "not valid TOML"),
    ("status: a policy file missing its tables", ["status", "--policy", "{inputs}/incomplete.toml", "--data-dir", "{demo}"],
     1, "incomplete.toml"),
    ("demo: a malformed policy file", ["demo", "--policy", "{inputs}/malformed.toml", "--people", "200",
                                       "--data-dir", "{inputs}/demo"], 1, "not valid TOML"),
    ("status: a stopped server", ["status", "--nats-url", STOPPED, "--data-dir", "{demo}"], 1, "cannot connect"),
    ("parked list: a stopped server", ["parked", "list", "--nats-url", STOPPED, "--data-dir", "{demo}"], 1, "cannot connect"),
    ("parked retry: a stopped server", ["parked", "retry", "--nats-url", STOPPED], 1, "cannot reach"),
    ("publish: a stopped server", ["publish", "upstream.payment.received", "{inputs}/payments.jsonl", "--nats-url", STOPPED],
     1, "cannot publish to NATS"),
    ("publish: a subject not in the contract", ["publish", "upstream.nope", "{inputs}/payments.jsonl", "--nats-url", STOPPED],
     1, "not an upstream subject"),
    ("asyncapi: an output that cannot be written", ["asyncapi", "--output", "/proc/none/asyncapi.json"], 1, "/proc/none"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_on_stderr_and_an_exit_code(
    args: list[str], code: int, words: str, demo_dir: Path, files: dict[str, Path]
) -> None:
    # Given a bad input (the demo's ledger where one is needed)
    argv = [a.replace("{demo}", str(demo_dir)).replace("{inputs}", str(files["dir"])) for a in args]
    # When the command runs
    run = ledger(*argv)
    # Then it says what is wrong in one line on stderr, prints nothing else, and exits with the code
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == ""
    assert run.returncode == code


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_stops_the_demo_and_its_children_and_marks_it_interrupted(tmp_path: Path) -> None:
    # Given a demo that has started its nats-server and ledger serve and is publishing (4,000
    # residents: some seconds of work left when the signal comes; 300 could all be done by then)
    data_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "LEDGER_PERSON_KEY_SECRET", "LEDGER_VIEWS")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "demo", "--people", "4000", "--data-dir", str(data_dir)],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # As from a terminal: a test run started in the background (`make test &`) ignores SIGINT,
        # and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        said = []
        assert demo.stderr is not None
        for line in demo.stderr:
            said.append(line)
            if line.startswith("publishing"):
                break
        children = _children(demo.pid)
        assert len(children) == 2, ("the nats-server and ledger serve run", said)
        # When the user presses Ctrl-C
        demo.send_signal(signal.SIGINT)
        out, rest = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    stderr = "".join(said) + rest
    # Then it exits 130 without a traceback, having stopped both children
    assert demo.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert [pid for pid in children if _alive(pid)] == []
    # And its state says it was interrupted, not running
    state = json.loads((data_dir / "demo.json").read_text())
    assert state["status"] == "interrupted" and state["stage"] in ("publishing", "catching up")
    # And ledger serve stopped gracefully (its last checkpoint written), before its server
    assert "event=stopped" in (data_dir / "serve.log").read_text()
