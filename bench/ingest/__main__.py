"""``python -m bench.ingest``: the end-to-end ingestion benchmark (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.ingest import population as pop
from bench.ingest.machine import IngestWatch
from bench.ingest.runs import WINDOW, Run, end_to_end, raw_ceiling
from bench.store.__main__ import server_version

TARGET_RATE = 5_000.0
"""Upstream messages per second end to end, on this 2-core machine (the issue)."""
TARGET_SHARE = 25.0
"""End to end as a percentage of the raw ceiling (the issue)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=(
            "End-to-end ingestion benchmark: N contract messages through `ledger serve` until each has its "
            "outcome, against the raw JetStream ceiling (publish + pull + ack, no domain work), in one run."
        ),
        epilog="What each line means: bench/README.md and the bench.ingest package docstring.",
    )
    parser.add_argument("--messages", type=int, help="upstream messages to publish (default 20,000; --quick: 4,000)")
    parser.add_argument("--batch-size", type=int, default=500, help="consumer batch size B (default 500)")
    parser.add_argument(
        "--window", type=int, default=WINDOW, help=f"publishes in flight before awaiting their acks (default {WINDOW:,})"
    )
    parser.add_argument("--quick", action="store_true", help="4,000 messages: a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every figure to FILE as JSON")
    args = parser.parse_args(argv)
    args.messages = args.messages if args.messages is not None else 4_000 if args.quick else 20_000
    if args.messages < 10 or args.batch_size < 1 or args.window < 1:
        parser.error("--messages must be at least 10, --batch-size and --window at least 1")
    return args


def _cpu(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f}"


def format_runs(runs: list[Run]) -> list[str]:
    header = (
        f"  {'run':<32}{'messages':>9}{'publish s':>11}{'total s':>9}{'msgs/s':>9}"
        f"{'consumer CPU s':>16}{'server CPU s':>14}{'publisher CPU s':>17}"
    )
    lines = [header]
    for r in runs:
        lines.append(
            f"  {r.name:<32}{r.messages:>9,}{r.publish_s:>11.2f}{r.total_s:>9.2f}{r.rate:>9,.0f}"
            f"{_cpu(r.cpu_s.get('consumer')):>16}{_cpu(r.cpu_s.get('nats-server')):>14}"
            f"{_cpu(r.cpu_s.get('publisher')):>17}"
        )
    return lines


def format_progress(runs: list[Run]) -> list[str]:
    """How fast each consumer went while the publisher was running, and afterwards."""
    lines = ["Consumer progress (ack floor when the last publish was acknowledged):"]
    for r in runs:
        after = r.rate_after_publishing
        lines.append(
            f"  {r.name:<32}{r.acked_when_published:>7,} of {r.messages:,} acknowledged by then: "
            f"{r.rate_while_publishing:,.0f} msgs/s while publishing ({r.publish_rate:,.0f} msgs/s published), "
            + (f"{after:,.0f} msgs/s for the remaining {r.messages - r.acked_when_published:,}" if after else "none left")
        )
    return lines


def format_outcomes(e2e: Run, messages: int) -> list[str]:
    s = e2e.streams
    events = s.get("LEDGER events", s.get("LEDGER", -1))
    rejected = s.get("REJECTED", -1)
    line = (
        f"Outcomes (end to end): UPSTREAM holds {s.get('UPSTREAM', -1):,} messages; {events:,} events recorded on "
        f"LEDGER ({events / messages:.2f} per message); {rejected:,} rejections on REJECTED"
    )
    if e2e.consumer_report:
        line += (
            f"; ledger serve reported recorded={e2e.consumer_report['recorded']:,} "
            f"rejected={e2e.consumer_report['rejected']:,}"
        )
    lines = [line + "."]
    cpu = e2e.cpu_s.get("consumer")
    if cpu is not None:
        lines.append(
            f"  ledger serve used {cpu:,.1f} CPU-s in {e2e.total_s:.2f} s "
            f"({100 * cpu / e2e.total_s:.0f}% of a core): {1e6 * cpu / messages:,.0f} µs of CPU per message."
        )
    return lines


def evaluate(e2e: Run, raw: Run) -> list[dict[str, object]]:
    share = 100 * e2e.rate / raw.rate
    return [
        {"target": f"end to end ≥ {TARGET_RATE:,.0f} upstream messages/s", "value": e2e.rate, "unit": "msgs/s",
         "met": e2e.rate >= TARGET_RATE},
        {"target": f"end to end ≥ {TARGET_SHARE:.0f}% of the raw ceiling", "value": share, "unit": "%",
         "met": share >= TARGET_SHARE},
    ]  # fmt: skip


def format_targets(rows: list[dict[str, object]]) -> list[str]:
    lines = ["Targets from the issue (information, not assertions), as measured in this run:"]
    for row in rows:
        value = float(row["value"])  # type: ignore[arg-type]
        shown = f"{value:,.1f}%" if row["unit"] == "%" else f"{value:,.0f} {row['unit']}"
        lines.append(f"  {row['target']:<50}{shown:>16}  {'met' if row['met'] else 'not met'}")
    return lines


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers, child processes and temp dirs are cleaned up


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    log(f"building {args.messages:,} messages ...")
    population = pop.build(args.messages)
    log(population.describe())
    watch = IngestWatch().start()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            tmp_path = Path(tmp)
            log(f"end to end: ledger serve --batch-size {args.batch_size} ...")
            e2e = end_to_end(tmp_path / "e2e", population.messages, args.batch_size, log, watch.add_own, args.window)
            log(f"end to end: {e2e.rate:,.0f} messages/s")
            log(f"raw ceiling: pull consumer, batches of {args.batch_size} ...")
            raw = raw_ceiling(tmp_path / "raw", population.messages, args.batch_size, log, watch.add_own, args.window)
            log(f"raw ceiling: {raw.rate:,.0f} messages/s")
    finally:
        watch.stop()
    elapsed = time.monotonic() - started
    targets = evaluate(e2e, raw)

    lines = [
        f"Ingestion benchmark (bench.ingest): {population.describe()}.",
        (
            f"Consumer batch size {args.batch_size}; {server_version()} (embedded, sync always, a fresh server "
            f"per run); Python {platform.python_version()}."
        ),
        (
            "Clock: first publish until the consumer's ack floor reaches the last message (nothing pending). "
            f"Publisher: this process, pipelined publish_async in windows of {args.window:,}, Nats-Msg-Id set; "
            "each consumer in its own process."
        ),
        "",
    ]
    lines += format_runs([e2e, raw])
    lines.append(f"  ratio end to end ÷ raw ceiling: {e2e.rate / raw.rate:.2f}")
    lines.append("")
    lines += format_progress([e2e, raw])
    lines.append("")
    lines += format_outcomes(e2e, args.messages)
    lines.append("")
    lines += format_targets(targets)
    lines.append("")
    lines.append(watch.describe(elapsed))
    print("\n".join(lines))

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "population": {
                        "messages": len(population.messages),
                        "people": population.people,
                        "subsidised": population.subsidised,
                        "by_subject": dict(population.by_subject),
                        "by_channel": dict(population.by_channel),
                        "by_subsidy": dict(population.by_subsidy),
                        "payload_bytes": population.payload_bytes,
                    },
                    "end_to_end": e2e.as_json(),
                    "raw_ceiling": raw.as_json(),
                    "ratio": e2e.rate / raw.rate,
                    "targets": targets,
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
