"""The one check of a user-given count or amount against its lower bound, so that every command and
the API word the refusal alike. Light to import: parsers check their options before torch loads."""
from __future__ import annotations


def at_least(value, option: str, low=1, meaning: str = ""):
    """``value`` unless it is below ``low`` or NaN (ValueError naming ``option`` and, where given, what
    the bound means, e.g. "0: off"); None passes (a default decided later)."""
    if value is not None and not value >= low:  # "not >=": NaN is refused too
        detail = f" ({meaning})" if meaning else ""
        raise ValueError(f"{option} must be >= {low}{detail}, got {value}")
    return value
