"""The printed table: one section per workload, one row per backend, ratios, then the targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.store.measure import Measurement

STORE_ALWAYS = "store (sync always)"
STORE_DEFAULT = "store (server default sync)"
RAW_ALWAYS = "raw nats-py (sync always)"
RAW_DEFAULT = "raw nats-py (server default sync)"
SQLITE = "sqlite file"
POSTGRES = "postgresql"

BACKENDS = (STORE_ALWAYS, STORE_DEFAULT, RAW_ALWAYS, RAW_DEFAULT, SQLITE, POSTGRES)

RATIO_COLUMNS = ((STORE_ALWAYS, "always÷row"), (STORE_DEFAULT, "default÷row"))
"""Each ratio column divides one of this store's rates by the row's rate (>1: the store is faster)."""

SAME_SYNC_ONLY = {RAW_ALWAYS: STORE_ALWAYS, RAW_DEFAULT: STORE_DEFAULT}
"""Raw rows are compared only with the store on the same server."""

Results = dict[str, dict[str, Measurement]]
"""workload key → backend → measurement."""


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    rate_unit: str = "events/s"
    latencies: bool = False


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def ratio(results: Results, workload: str, store: str, row: str) -> float | None:
    """``store``'s rate divided by ``row``'s in ``workload``; None when either is missing."""
    measured = results.get(workload, {})
    if store not in measured or row not in measured:
        return None
    return measured[store].rate / measured[row].rate


def format_section(workload: Workload, results: Results) -> list[str]:
    measured = results.get(workload.key, {})
    if not measured:
        return []
    lines = [workload.title]
    header = f"  {'backend':<34}{'count':>9}{'seconds':>9}{workload.rate_unit:>14}"
    header += f"{'p50 ms':>9}{'p99 ms':>9}" if workload.latencies else ""
    header += "".join(f"{label:>13}" for _, label in RATIO_COLUMNS)
    lines.append(header)
    for backend in BACKENDS:
        m = measured.get(backend)
        if m is None:
            continue
        line = f"  {backend:<34}{m.count:>9,}{m.seconds:>9.2f}{_num(m.rate):>14}"
        if workload.latencies:
            line += f"{_num(m.p50_ms, 2):>9}{_num(m.p99_ms, 2):>9}"
        for store, _label in RATIO_COLUMNS:
            compared_with = SAME_SYNC_ONLY.get(backend, store)
            r = ratio(results, workload.key, store, backend) if compared_with == store else None
            cell = "" if r is None or backend == store else f"{r:.2f}"
            line += f"{cell:>13}"
        lines.append(line)
    return lines


@dataclass(frozen=True)
class Target:
    """A target from the issue: a measured value for a store run and whether it meets the bar."""

    text: str
    value: Callable[[Results, str], float | None]
    unit: str
    met: Callable[[float], bool]
    stores: tuple[str, ...] = (STORE_ALWAYS, STORE_DEFAULT)


def _rate(workload: str) -> Callable[[Results, str], float | None]:
    return lambda results, store: results[workload][store].rate if store in results.get(workload, {}) else None


def _share_of_raw(workload: str) -> Callable[[Results, str], float | None]:
    def value(results: Results, store: str) -> float | None:
        r = ratio(results, workload, store, RAW_ALWAYS if store == STORE_ALWAYS else RAW_DEFAULT)
        return None if r is None else 100 * r

    return value


def _latency(workload: str, which: str) -> Callable[[Results, str], float | None]:
    def value(results: Results, store: str) -> float | None:
        m = results.get(workload, {}).get(store)
        return None if m is None else getattr(m, which)

    return value


TARGETS = (
    Target("single-event saves ≥ 70% of raw single publish", _share_of_raw("a"), "%", lambda v: v >= 70),
    Target("saves of 100 ≥ 60% of raw atomic batches of 100", _share_of_raw("b"), "%", lambda v: v >= 60),
    Target(
        "group commit ≥ 10,000 events/s with sync always",
        _rate("e"),
        "events/s",
        lambda v: v >= 10_000,
        stores=(STORE_ALWAYS,),
    ),
    Target("reading ≥ 100,000 events/s", _rate("c"), "events/s", lambda v: v >= 100_000),
    Target("aggregate load p50 ≤ 1 ms", _latency("d", "p50_ms"), "ms", lambda v: v <= 1.0),
    Target("aggregate load p99 ≤ 3 ms", _latency("d", "p99_ms"), "ms", lambda v: v <= 3.0),
)


def evaluate_targets(results: Results) -> list[dict[str, object]]:
    rows = []
    for target in TARGETS:
        for store in (STORE_ALWAYS, STORE_DEFAULT):
            value = target.value(results, store)
            applies = store in target.stores
            rows.append(
                {
                    "target": target.text,
                    "store": store,
                    "value": value,
                    "unit": target.unit,
                    "met": (target.met(value) if value is not None else None) if applies else None,
                    "applies": applies,
                }
            )
    return rows


def format_targets(rows: list[dict[str, object]]) -> list[str]:
    lines = ["Targets from the issue (information, not assertions), as measured in this run:"]
    lines.append(f"  {'target':<50}{'sync always':>24}{'server default sync':>28}")
    by_target: dict[str, dict[str, dict[str, object]]] = {}
    for row in rows:
        by_target.setdefault(str(row["target"]), {})[str(row["store"])] = row
    for text, stores in by_target.items():
        cells = []
        for store in (STORE_ALWAYS, STORE_DEFAULT):
            row = stores[store]
            value = row["value"]
            if value is None:
                cells.append("not measured")
                continue
            digits = 2 if row["unit"] == "ms" else 0
            shown = f"{value:,.{digits}f} {row['unit']}".replace(" %", "%")
            verdict = "met" if row["met"] else "not met" if row["applies"] else "(info)"
            cells.append(f"{shown} {verdict}")
        lines.append(f"  {text:<50}{cells[0]:>24}{cells[1]:>28}")
    return lines


def format_memory(m: Measurement | None) -> list[str]:
    if m is None:
        return []
    e = m.extra
    mib = 1024 * 1024
    return [
        "(f) nats-server memory per subject (this store, sync always, fresh stream, one event per aggregate)",
        f"  {m.count:,} aggregates added in {m.seconds:.1f} s ({m.rate:,.0f}/s): VmRSS "
        f"{e['rss_before_bytes'] / mib:,.1f} MiB → {e['rss_after_bytes'] / mib:,.1f} MiB, "
        f"{e['bytes_per_subject']:,.0f} bytes per subject, "
        f"≈ {e['bytes_per_million_aggregates'] / mib:,.0f} MiB per million aggregates",
    ]
