"""``ledger demo`` at a small size, and the README's commands after it, run as a newcomer would.

The demo publishes its season through the upstream contract into a ``ledger serve`` process on an
embedded nats-server; here it must finish, give every piece of bad input exactly the rejection
the simulation expects, and catch every planted fraud case. Then the lines the README tells a
newcomer to try are run, unchanged, in a fresh directory.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEOPLE = 400


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``args`` as a user runs them, with the output captured at 80 columns (a pipe, a CI log)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "LEDGER_PERSON_KEY_SECRET", "LEDGER_VIEWS")}
    env = {k: v for k, v in env.items() if not k.startswith(("LEDGER_CIPHER", "LEDGER_PAYLOAD"))}  # the defaults
    return subprocess.run(
        args, cwd=cwd, env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _widest(text: str) -> int:
    """The widest line of ``text`` in terminal cells (a Chinese character takes two)."""
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.splitlines()), default=0)


def test_the_demo_catches_every_planted_case_and_the_readme_commands_work_on_it(tmp_path: Path) -> None:
    # Given a fresh directory, as a newcomer's checkout would be (with the project's .venv)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    # When the demo runs at a small size
    demo = _run(
        [sys.executable, "-m", "service.cli", "demo", "--people", str(PEOPLE), "--report", "data/demo/report.html"],
        tmp_path,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]

    # Then it reports, and every planted case was caught
    summary = json.loads((tmp_path / "data/demo/demo.json").read_text())
    assert summary["status"] == "done" and summary["people"] == PEOPLE
    assert summary["planted"], "the season plants fraud"
    assert [p for p in summary["planted"] if not p["caught"]] == []
    assert {p["rule"] for p in summary["planted"]} >= {"after_death", "shared_contact", "cash_unremitted"}
    # And each piece of bad input got exactly the rejection the simulation expected
    assert summary["rejections"] == summary["expected_rejections"]
    # And most of the population is enrolled, as in a real season
    assert 0.85 * summary["target"] <= summary["enrolled"] <= summary["target"]
    for heading in ("Enrollment rate per district", "Rejections by reason", "Fraud flags by rule", "Planted fraud"):
        assert heading in demo.stdout
    assert _widest(demo.stdout) <= 80, "the report fits 80 columns"
    page = (tmp_path / "data/demo/report.html").read_text()
    assert page.count("<svg") == 2 and "Planted fraud" in page and "<script" not in page
    # And it ran encrypted, with a payload key of the data directory's own, readable by its owner only
    key_file = tmp_path / "data/demo/cipher.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # (the README's commands below read through it)

    # When the README's lines for after the demo run, unchanged, in that directory
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- demo-commands -->\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README marks the commands to try after the demo"
    script = "set -euo pipefail\n" + block.group(1)
    run = _run(["bash", "-c", script], tmp_path)
    # Then every one of them works
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "covered" in run.stdout and "timeline" in run.stdout
    assert "enrollment and funds per district" in " ".join(run.stdout.split())
    assert re.search(r"replayed [\d,]+ ledger events and [\d,]+ rejections", run.stdout)
    assert (tmp_path / "data/demo/districts.csv").read_text().startswith("district,")
    assert "intact: every message signed, every hash chain and checkpoint holds" in run.stdout
    checkpoints = re.search(r"(\d+) checkpoints verified", run.stdout)
    assert checkpoints and int(checkpoints.group(1)) >= 1, "ledger serve signs a checkpoint when it stops"
    # And what they print fits 80 columns
    assert _widest(run.stdout) <= 80, run.stdout
    # And everything they wrote is under data/ (git-ignored): nothing new in a checkout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".venv", "data"]


def test_the_readme_walk_through_with_the_example_messages_works_as_written(tmp_path: Path) -> None:
    # Given a fresh directory with the project's .venv and example messages
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- serve-commands -->\n```sh\n(.*?)```", readme, re.S)
    assert block, "the README marks its walk through"
    # When its lines run unchanged
    run = _run(["bash", "-c", "set -euo pipefail\n" + block.group(1)], tmp_path, timeout=180)
    log = tmp_path / "data/local/serve.log"
    # Then the service started, took the messages, answered from the views, and stopped cleanly
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + (log.read_text()[-2000:] if log.exists() else "")
    assert "published 1 messages on upstream.subsidy.listed" in run.stderr
    assert re.search(r'covered\s+│ True', run.stdout), run.stdout  # dibao roster: paid its 10% share
    assert "amount_mismatch" in run.stdout, "the wrong payment is rejected, and reported"
    assert "event=stopped" in log.read_text()
    # And everything the lines wrote is under data/ (git-ignored): nothing new in a checkout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".venv", "data", "docs"]
    assert _widest(run.stdout) <= 80, run.stdout
