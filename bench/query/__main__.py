"""``python -m bench.query``: the coverage.query latency benchmark (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import math
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.ingest.machine import IngestWatch
from bench.query.runs import GRACE, Measured, Run, measure
from bench.store.__main__ import server_version

TARGET_P99_MS = 5.0
"""coverage.query p99 latency at the benchmark's rate (the issue)."""
TARGET_ECHO_FACTOR = 3.0
"""coverage.query p99 at most this many times a bare NATS echo's p99 (the issue)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.query",
        description=(
            "coverage.query latency: an open-loop steady load of requests against `ledger serve` and, in the "
            "same run at the same rate, against a bare NATS echo responder."
        ),
        epilog="What each line means: bench/README.md and the bench.query package docstring.",
    )
    parser.add_argument("--people", type=int, help="people in the ledger (default 5,000; --quick: 1,000)")
    parser.add_argument("--rate", type=float, help="requests per second, open loop (default 2,000; --quick: 500)")
    parser.add_argument("--seconds", type=float, help="seconds of load per responder (default 10; --quick: 2)")
    parser.add_argument("--quick", action="store_true", help="1,000 people, 2 s at 500 requests/s: a smoke run")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    args.people = args.people if args.people is not None else 1_000 if args.quick else 5_000
    args.rate = args.rate if args.rate is not None else 500.0 if args.quick else 2_000.0
    args.seconds = args.seconds if args.seconds is not None else 2.0 if args.quick else 10.0
    if args.people < 10 or args.rate <= 0 or args.seconds <= 0 or args.rate * args.seconds < 10:
        parser.error("--people must be at least 10, --rate and --seconds positive, at least 10 requests in all")
    return args


def _ms(value: float, unit: str = "") -> str:
    """A latency for the table (``unit=""``) or for prose (``unit=" ms"``)."""
    if math.isinf(value):
        return "no reply"
    return "—" if math.isnan(value) else f"{value:,.2f}{unit}"


def _cpu(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def format_runs(runs: list[Run]) -> list[str]:
    header = (
        f"  {'responder':<31}{'requests':>9}{'answered':>9}{'sent/s':>8}{'replies/s':>10}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>10}"
    )
    lines = [header]
    for r in runs:
        s = r.stats()
        lines.append(
            f"  {r.name:<31}{r.requests:>9,}{r.answered:>9,}{r.sent_rate:>8,.0f}{r.reply_rate:>10,.0f}"
            f"{_ms(s['p50_ms']):>9}{_ms(s['p90_ms']):>9}{_ms(s['p99_ms']):>9}{_ms(s['max_ms']):>10}"
        )
    return lines


def format_generator(runs: list[Run]) -> list[str]:
    lines = ["Load generator (send lag = actual − scheduled send time, already inside the latencies above):"]
    for r in runs:
        lag = r.lag_stats()
        lines.append(
            f"  {r.name:<31} send lag p50 {lag['p50_ms']:.3f} ms, p99 {lag['p99_ms']:.3f} ms, max {lag['max_ms']:.2f} ms"
            + (f"; {len(r.failed):,} failed ({', '.join(sorted(set(r.failed.values())))})" if r.failed else "")
        )
    return lines


def format_cpu(runs: list[Run]) -> list[str]:
    lines = ["CPU seconds while each run's clock ran (/proc utime + stime):"]
    for r in runs:
        responder = r.cpu_s.get("responder")
        per = f" = {1e6 * responder / r.answered:,.0f} µs an answered request" if responder and r.answered else ""
        lines.append(
            f"  {r.name:<31} {r.clock_s:.1f} s: responder {_cpu(responder)}{per} "
            f"({100 * (responder or 0) / r.clock_s:.0f}% of a core), nats-server {_cpu(r.cpu_s.get('nats-server'))}, "
            f"load generator {_cpu(r.cpu_s.get('load generator'))}"
        )
    return lines


def format_project_detail(project: Run) -> list[str]:
    lines = ["ledger serve in detail:"]
    series = project.per_second_p99()
    lines.append("  p99 ms per second of the schedule: " + " ".join(_ms(v) for v in series))
    unanswered = project.requests - project.answered
    if unanswered:
        answered = project.stats([v for v in project.latencies_ms if not math.isinf(v)])
        lines.append(
            f"  {unanswered:,} requests had no reply within {GRACE:g} s of the last one sent; the {project.answered:,} "
            f"answered waited p50 {_ms(answered['p50_ms'], ' ms')}, p99 {_ms(answered['p99_ms'], ' ms')}, "
            f"max {_ms(answered['max_ms'], ' ms')} (the responder's backlog)"
        )
    first, rest = project.split_by_first_ask()
    f, o = project.stats(first), project.stats(rest)
    lines.append(
        f"  first request about a person (not yet in ledger serve's aggregate cache): {len(first):,}, "
        f"p50 {_ms(f['p50_ms'], ' ms')}, p99 {_ms(f['p99_ms'], ' ms')}"
    )
    lines.append(
        f"  repeated person, or unknown to the ledger: {len(rest):,}, "
        f"p50 {_ms(o['p50_ms'], ' ms')}, p99 {_ms(o['p99_ms'], ' ms')}"
    )
    outcomes = ", ".join(f"{kind} {n:,}" for kind, n in project.outcomes().most_common())
    lines.append(f"  replies: {outcomes}")
    return lines


def evaluate(project: Run, echo: Run) -> list[dict[str, object]]:
    ratio = project.p99 / echo.p99 if echo.p99 > 0 else math.inf
    return [
        {"target": f"p99 ≤ {TARGET_P99_MS:g} ms", "value": project.p99, "unit": "ms", "met": project.p99 <= TARGET_P99_MS},
        {"target": f"p99 ≤ {TARGET_ECHO_FACTOR:g}× the echo's p99", "value": ratio, "unit": "×",
         "met": ratio <= TARGET_ECHO_FACTOR},
    ]  # fmt: skip


def format_targets(rows: list[dict[str, object]], rate: float) -> list[str]:
    lines = [f"Targets from the issue at {rate:,.0f} requests/s (information, not assertions), as measured in this run:"]
    for row in rows:
        value = float(row["value"])  # type: ignore[arg-type]
        shown = "no reply" if math.isinf(value) else f"{value:,.2f} ms" if row["unit"] == "ms" else f"{value:,.2f}×"
        lines.append(f"  {row['target']:<36}{shown:>14}  {'met' if row['met'] else 'not met'}")
    return lines


def report(args: argparse.Namespace, m: Measured, watch: IngestWatch, elapsed: float) -> list[str]:
    project, echo = m.project, m.echo
    lines = [
        f"Coverage query benchmark (bench.query): {m.population.describe()}.",
        (
            f"Ledger populated in this run: {m.facts:,} facts → {m.events:,} events on LEDGER in {m.populate_s:.1f} s; "
            f"{server_version()} (embedded, sync always); Python {platform.python_version()}."
        ),
        (
            f"Open loop: {args.rate:,.0f} requests/s for {args.seconds:g} s to each responder, request i due at "
            f"t0 + i/rate whatever the replies; latency = reply received − scheduled send time (a stalled responder "
            f"cannot hide its backlog). Load generator: its own process, one raw NATS connection; unanswered after "
            f"{GRACE:g} s = no reply. Responders: ledger serve (its own process, as in production, aggregate cache "
            f"empty at the start; clock started once it answered and then went idle, after "
            f"{m.settle_s['project']:.1f} s), then the echo (its own process, the same {len(m.canned_reply)}-byte reply)."
        ),
        "",
    ]
    lines += format_runs([project, echo])
    ratio = project.p99 / echo.p99 if echo.p99 > 0 else math.inf
    lines.append(f"  ratio ledger serve p99 ÷ echo p99: {'no reply' if math.isinf(ratio) else f'{ratio:,.2f}'}")
    lines.append("")
    lines += format_project_detail(project)
    lines.append("")
    lines += format_generator([project, echo])
    lines.append("")
    lines += format_cpu([project, echo])
    lines.append("")
    lines += format_targets(evaluate(project, echo), args.rate)
    lines.append("")
    lines.append(watch.describe(elapsed))
    return lines


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers, child processes and temp dirs are cleaned up


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    watch = IngestWatch().start()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
            measured = measure(Path(tmp), args.people, args.rate, args.seconds, log, watch.add_own)
    finally:
        watch.stop()
    elapsed = time.monotonic() - started
    print("\n".join(report(args, measured, watch, elapsed)))

    if args.json:
        project, echo = measured.project, measured.echo
        ratio = project.p99 / echo.p99 if echo.p99 > 0 else math.inf
        args.json.write_text(
            json.dumps(
                {
                    "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "population": {
                        "people": len(measured.population.people),
                        "paid": measured.population.paid,
                        "requests": len(measured.population.requests),
                        "first_asks": measured.population.first_asks,
                        "facts": measured.facts,
                        "events": measured.events,
                        "populate_s": measured.populate_s,
                    },
                    "settle_s": measured.settle_s,
                    "ledger_serve": project.as_json(),
                    "echo": echo.as_json(),
                    "ratio_p99": None if math.isinf(ratio) else ratio,
                    "targets": [
                        {**t, "value": None if math.isinf(float(t["value"])) else t["value"]}  # type: ignore[arg-type]
                        for t in evaluate(project, echo)
                    ],
                    "machine": watch.summary(),
                    "elapsed_s": elapsed,
                },
                indent=2,
            )
            + "\n"
        )
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
