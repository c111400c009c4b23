"""Latency records for the report tests, built as `latency_summary` builds them."""

from trimkit.runtime.timing import latency_summary


def timing(p50_ms: float, spread: float = 0.02) -> dict[str, float]:
    """A record with this p50 whose middle half spreads by `spread` of it (the `timing.SPREAD` measure)."""
    s = p50_ms / 1000
    return latency_summary([s * (1 - spread), s * (1 - spread / 2), s, s * (1 + spread / 2), s * (1 + spread)],
                           batch=1)
