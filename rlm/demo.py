"""The demo's data: a generated log with one needle in it."""

from __future__ import annotations

import random
from dataclasses import dataclass

QUERY = "What is the secret access code?"

_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
_ACTIONS = ["viewed", "edited", "shared", "archived", "restored", "commented on"]


@dataclass(frozen=True)
class Haystack:
    text: str
    answer: str
    needle_line: int
    query: str = QUERY


def make_haystack(lines: int = 1_000_000, seed: int = 7) -> Haystack:
    """``lines`` lines of plausible log noise and, somewhere, the secret access code."""
    rng = random.Random(seed)
    answer = f"{rng.choice(['ZEBRA', 'OTTER', 'MAPLE', 'COMET'])}-{rng.randrange(1000, 9999)}"
    needle_at = rng.randrange(lines // 4, lines - lines // 4) if lines > 4 else 0
    out = []
    for i in range(lines):
        if i == needle_at:
            out.append(f"{i:07d} NOTICE the secret access code is {answer}. Keep it safe.")
            continue
        out.append(
            f"{i:07d} INFO user {_USERS[i % 8]} {_ACTIONS[(i * 7) % 6]} "
            f"document {(i * 2654435761) % 100000:05d}"
        )
    return Haystack(text="\n".join(out), answer=answer, needle_line=needle_at)
