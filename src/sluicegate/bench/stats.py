"""Percentiles by linear interpolation between the closest ranks (numpy's default, Hyndman & Fan type 7)."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    """The pct-th percentile (0..100) of values already sorted ascending; None when there are none."""
    n = len(sorted_values)
    if n == 0:
        return None
    if not 0.0 <= pct <= 100.0:
        raise ValueError("percentile must be within 0..100")
    rank = (n - 1) * pct / 100.0
    low = int(rank)
    if low >= n - 1:
        return float(sorted_values[-1])
    fraction = rank - low
    return float(sorted_values[low] + (sorted_values[low + 1] - sorted_values[low]) * fraction)


def summarise(values: Sequence[float], pcts: Sequence[float]) -> dict[str, float | int | None]:
    """{"p50": ..., "p99": ..., "max": ..., "n": ...} for the given percentiles."""
    ordered = sorted(values)
    summary: dict[str, float | int | None] = {f"p{_label(p)}": percentile(ordered, p) for p in pcts}
    summary["max"] = ordered[-1] if ordered else None
    summary["n"] = len(ordered)
    return summary


def _label(pct: float) -> str:
    return str(int(pct)) if float(pct).is_integer() else str(pct).replace(".", "_")
