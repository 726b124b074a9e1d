"""Options and checks more than one command shares, written once: the image size (S or H W), the
k×k backend and routing choices, and the ">= 1" counts. Light to import: the command line builds
its parsers from here before anything heavy is loaded."""
from __future__ import annotations

from typing import Sequence, Tuple

from spark_sparse.backends import BACKEND_NAMES

SIZE_HELP = "image size: S or H W, multiples of 32"
ROUTING_HELP = ("how 'auto' layers choose their implementation: measured (time the candidates on first use, "
                "cached in the user's cache directory for later runs) or fixed (the rule table, reproducible) "
                "(default: $SPARK_SPARSE_ROUTING, else measured)")


def at_least(value, option: str, low: int = 1):
    """``value`` unless it is below ``low`` (ValueError naming ``option``); None passes (a default)."""
    if value is not None and value < low:
        raise ValueError(f"{option} must be >= {low}, got {value}")
    return value


def image_size(values: Sequence[int], option: str = "--size") -> Tuple[int, int]:
    """(height, width) from ``--size S`` or ``--size H W`` (ValueError for any other count)."""
    if len(values) not in (1, 2):
        raise ValueError(f"{option} takes S or H W, got {len(values)} numbers")
    height, width = (list(values) * 2)[:2]
    return int(height), int(width)


def add_backend(p, flag: str = "--backend", **kwargs) -> None:
    """A choice of the sparse encoder's k×k conv backend (``spark_sparse.backends.BACKEND_NAMES``)."""
    kwargs.setdefault("help", "k×k convolution backend of the sparse encoder")
    p.add_argument(flag, choices=list(BACKEND_NAMES), **kwargs)


def add_routing(p, **kwargs) -> None:
    """--routing: measured or fixed (``spark_sparse.routing.ROUTING_MODES``)."""
    from spark_sparse.routing import ROUTING_MODES
    p.add_argument("--routing", choices=list(ROUTING_MODES), help=ROUTING_HELP, **kwargs)
