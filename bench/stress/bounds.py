"""Timing bounds: a figure a part measures against the limit it publishes.

Every run reports each bound (the figure, the limit, whether it held); the full run
(`python -m bench.stress`) counts a broken bound as a failure, while the tiny runs of `make test`
check only that the figure is reported: how fast a shared test machine is proves nothing.
"""

from __future__ import annotations


def bound(value: float | None, limit: float, unit: str) -> dict:
    """`value` None: the event never came within the part's wait (a broken bound)."""
    return {"value": value, "limit": limit, "unit": unit, "held": value is not None and value <= limit}


def broken(bounds: dict[str, dict]) -> dict[str, dict]:
    return {name: b for name, b in bounds.items() if not b["held"]}
