"""The names (and help) the command line offers for ``--routing``, ``--amp``, ``--dtypes`` and
``--backend``, in a module without torch: the parsers read them here, so ``spark-sparse --help``,
any command's ``--help`` or a mistyped option answers without loading torch. ``routing`` and
``precision`` give them their meaning."""
import os

ROUTING_MODES = ("measured", "fixed")            # how 'auto' layers choose: spark_sparse.routing
AMP_DTYPES = ("bf16", "fp16")                    # what autocast runs in: spark_sparse.precision
PRECISIONS = ("fp32",) + AMP_DTYPES              # the benchmarks' --dtypes: spark_sparse.precision.DTYPES
AMP_CHOICES = ("auto",) + AMP_DTYPES + ("off",)  # training's --amp
ROUTING_HELP = ("how 'auto' layers choose their implementation: measured (time the candidates on first use, "
                "cached in the user's cache directory for later runs) or fixed (the rule table, reproducible) "
                "(default: $SPARK_SPARSE_ROUTING, else measured)")
BACKEND_HELP = ("how the sparse encoder runs its k×k convs: auto (the router's choice per layer, see "
                "--routing), torch (gather + BLAS GEMM), gather-conv (the same gather, its GEMMs as oneDNN's / "
                "cuDNN's 1×1 convs), tiles (halo tiles + the dense conv), spconv (needs the spconv package)")
SHARED_CPU_HELP = ("the CPU is shared with busy processes (other jobs, data workers decoding large images): "
                   "torch's idle OpenMP threads spin briefly before they sleep (GOMP_SPINCOUNT=10000, read by GNU "
                   "OpenMP as in torch's Linux wheels) instead of for milliseconds, so they do not hold cores the "
                   "others need. With two busy processes on a 2-core CPU resnet50's sparse encoder ran 1.35x and "
                   "the no-argument run 1.2-1.45x as fast; on a quiet CPU short steps run about 10 %% slower. An "
                   "OMP_WAIT_POLICY or GOMP_SPINCOUNT already set is kept")
ROUTING_ENV = "SPARK_SPARSE_ROUTING"             # the default policy when none is set


def check_routing(mode: str) -> str:
    """``mode`` if it names a routing policy, else ValueError naming the accepted ones."""
    if mode not in ROUTING_MODES:
        raise ValueError(f"unknown routing {mode!r}; choose one of {', '.join(ROUTING_MODES)}")
    return mode


def routing_from_env() -> str:
    """``$SPARK_SPARSE_ROUTING`` checked (ValueError naming the variable), else 'measured'. The command
    line checks it before any command runs, so a bad value is refused before anything is written."""
    value = os.environ.get(ROUTING_ENV)
    if not value:
        return "measured"
    try:
        return check_routing(value)
    except ValueError as e:
        raise ValueError(f"${ROUTING_ENV}: {e}") from None
