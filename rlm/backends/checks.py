"""What an out-of-process sandbox reports about a cell, checked again on the host.

A container's runner and the restricted worker cap a cell's output and bound its
final answer themselves; the host does not trust that they did, and applies the
same bounds to what they report.
"""

from __future__ import annotations

from typing import Any

from rlm_sandbox.final import json_size

#: Room past the limit for the sandbox's own truncation marker.
_MARKER_ROOM = 200


def cap_output(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters (with a marker) and whether it was cut
    here; output that the sandbox cut itself, marker included, passes unchanged."""
    if len(text) <= limit + _MARKER_ROOM:
        return text, False
    return text[:limit] + f"\n... [output truncated: {len(text) - limit:,} more characters]", True


def bound_final(
    final: dict[str, Any] | None, error: str | None, value_limit: int
) -> tuple[dict[str, Any] | None, str | None]:
    """``final`` and ``error`` as the cell's result carries them: a final answer over
    ``value_limit`` characters (as JSON) is dropped, and the error says so."""
    if final is None or _final_size(final["value"]) <= value_limit:
        return final, error
    return None, (f"{error}\n" if error else "") + (
        f"ValueError: the final answer is over the limit of {value_limit:,} "
        "characters; give a shorter answer"
    )


def _final_size(value: Any) -> int:
    try:
        return json_size(value)
    except (RecursionError, ValueError):  # nested past what the host will walk
        return 1 << 62
