"""The seeds every command accepts: 0 … 2**32 − 1.

torch's CPU generator keeps only the low 32 bits of a seed (2**32 draws the same numbers as 0, and
−1 the same as 2**32 − 1), and seeds of 2**64 or more overflow it; a seed outside this range would
look different from another and draw the same numbers, or fail deep inside torch.
"""
from __future__ import annotations

MAX_SEED = 2**32 - 1


def check_seed(seed: int, option: str = "--seed") -> int:
    """``seed``, or ValueError naming ``option`` and the accepted range."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{option} must be in 0 … {MAX_SEED} (torch's generator keeps 32 bits of a seed), got {seed}")
    return seed
