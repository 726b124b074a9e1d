"""How every sparse conv (and max-pool) layer runs: one name space of implementations and their
functions, one rule table, one ``route`` function, and measured routing with its cache (see router.py)."""
from ..choices import ROUTING_MODES, check_routing
from .cache import cache_dir, cache_path
from .implementations import (IMPLEMENTATIONS, KIND_IMPLEMENTATIONS, RUN, candidates, compute, depthwise_request,
                              label, layer_kind, unsupported)
from .replay import RouteLog
from .router import (Route, Workload, forget_measurements, get_routing, route, routing_mode, run_route, set_routing,
                     tuning_stats)

__all__ = ["IMPLEMENTATIONS", "KIND_IMPLEMENTATIONS", "ROUTING_MODES", "RUN", "Route", "RouteLog", "Workload",
           "cache_dir", "cache_path", "candidates", "check_routing", "compute", "depthwise_request",
           "forget_measurements", "get_routing", "label", "layer_kind", "route", "routing_mode", "run_route",
           "set_routing", "tuning_stats", "unsupported"]
