"""Options and checks more than one command shares, written once: the image size (S or H W), the
k×k backend and routing choices. Light to import: the command line builds
its parsers from here before anything heavy is loaded."""
from __future__ import annotations

from typing import Sequence, Tuple

from spark_sparse.backends import BACKEND_NAMES
from spark_sparse.choices import BACKEND_HELP, ROUTING_HELP, ROUTING_MODES

SIZE_HELP = "image size: S or H W, multiples of 32"


def image_size(values: Sequence[int], option: str = "--size") -> Tuple[int, int]:
    """(height, width) from ``--size S`` or ``--size H W`` (ValueError for any other count)."""
    if len(values) not in (1, 2):
        raise ValueError(f"{option} takes S or H W, got {len(values)} numbers")
    height, width = (list(values) * 2)[:2]
    return int(height), int(width)


def add_backend(p, flag: str = "--backend", **kwargs) -> None:
    """A choice of the sparse encoder's k×k conv backend (``spark_sparse.backends.BACKEND_NAMES``)."""
    kwargs.setdefault("help", BACKEND_HELP)
    p.add_argument(flag, choices=list(BACKEND_NAMES), **kwargs)


def add_routing(p, **kwargs) -> None:
    """--routing: measured or fixed (``spark_sparse.choices.ROUTING_MODES``)."""
    p.add_argument("--routing", choices=list(ROUTING_MODES), help=ROUTING_HELP, **kwargs)
