"""Medians, ratios and the Markdown table."""

from __future__ import annotations

import statistics

from measures import Measure, Metric

COLUMNS = [
    "direct",
    "proxy",
    "proxy-aiohttp",
    "base",
    "naive",
    "nginx",
    "nginx-64k",
    "caddy",
    "mitmproxy",
]
SUBJECT = "proxy"  # this project: the ratios are its figure over each peer's
RATIO_VS = ["base", "naive", "nginx", "nginx-64k", "caddy", "mitmproxy"]
# (numerator, denominator) of each ratio column: this project over each peer, then its aiohttp
# transport over its default one and over the naive proxy (the same client library, no features)
RATIOS = [(SUBJECT, c) for c in RATIO_VS] + [("proxy-aiohttp", SUBJECT), ("proxy-aiohttp", "naive")]

YES_NO = {"exact", "complete"}  # must hold in every run: shown as yes/no
Runs = dict[str, dict[str, list[dict[str, float | str]]]]  # measure -> column -> runs
Medians = dict[str, dict[str, dict[str, float | str]]]  # measure -> column -> metric -> value


def medians(measures: list[Measure], runs: Runs) -> Medians:
    """Median of each metric over the runs that produced it; "n/a" or "error: ..." otherwise."""
    out: Medians = {}
    for m in measures:
        out[m.id] = {}
        for col, col_runs in runs.get(m.id, {}).items():
            cell: dict[str, float | str] = {}
            ok = [r for r in col_runs if "error" not in r and "na" not in r]
            for metric in m.metrics:
                values = [float(r[metric.key]) for r in ok if metric.key in r]
                if values:
                    cell[metric.key] = (
                        min(values) if metric.key in YES_NO else statistics.median(values)
                    )
            if not ok and col_runs:
                first = col_runs[0]
                cell["status"] = str(first.get("na") or f"error: {first.get('error')}")
            out[m.id][col] = cell
    return out


def _fmt(metric: Metric, value: float | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if metric.key in YES_NO:
        return "yes" if value >= 1 else "no"
    digits = metric.digits
    if 0 < abs(value) < 10 and value != int(value):
        digits = max(digits, 2)  # 0.45 MB/s is not 0
    return f"{value:,.{digits}f}"


def _ratio(metric: Metric, mine: object, other: object) -> str:
    if not metric.ratio or not isinstance(mine, float) or not isinstance(other, float):
        return ""
    if other == 0:
        return ""
    r = mine / other
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"  # 0.0016x, not 0.00x


def table(measures: list[Measure], med: Medians) -> str:
    shown = {c for m in measures for c in med.get(m.id, {})}  # columns that ran
    columns = [c for c in COLUMNS if c in shown]
    ratios = [(x, y) for x, y in RATIOS if x in shown and y in shown]
    head = ["measure", "metric", "better", *columns] + [f"{x} ÷ {y}" for x, y in ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    arrows = {"higher": "↑", "lower": "↓", "": ""}
    for m in measures:
        cells_by_col = med.get(m.id, {})
        for i, metric in enumerate(m.metrics):
            row = [m.title if i == 0 else "", metric.label, arrows[metric.better]]
            for col in columns:
                if col not in m.columns:
                    row.append("")
                    continue
                cell = cells_by_col.get(col, {})
                if "status" in cell:
                    status = str(cell["status"])
                    row.append("n/a" if status.startswith("n/a") else "err")
                else:
                    row.append(_fmt(metric, cell.get(metric.key)))
            for x, y in ratios:
                mine = cells_by_col.get(x, {}).get(metric.key)
                other = cells_by_col.get(y, {}).get(metric.key)
                row.append(_ratio(metric, mine, other) if {x, y} <= m.columns.keys() else "")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def problems(measures: list[Measure], med: Medians) -> list[str]:
    """One line per cell that has no figure, with its reason."""
    out = []
    for m in measures:
        for col, cell in med.get(m.id, {}).items():
            if "status" in cell:
                reason = str(cell["status"]).splitlines()[0][:300]
                out.append(f"- {m.id} / {col}: {reason}")
    return out


def noisy(runs: Runs, threshold: float = 10.0) -> list[str]:
    """Per measure, the runs during which other work kept core 0 busy: figures to distrust."""
    out = []
    for mid, cols in runs.items():
        hits = []
        for col, col_runs in cols.items():
            for i, r in enumerate(col_runs):
                other = r.get("core0_other_pct")
                if isinstance(other, float) and other > threshold:
                    hits.append(f"{col}#{i + 1} {other:.0f}")
        if hits:
            out.append(f"- {mid}: " + ", ".join(hits))
    return out
