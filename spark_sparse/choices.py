"""The names (and help) the command line offers for ``--routing``, ``--amp``, ``--dtypes`` and
``--backend``, in a module without torch: the parsers read them here, so ``spark-sparse --help``,
any command's ``--help`` or a mistyped option answers without loading torch. ``routing`` and
``precision`` give them their meaning."""
ROUTING_MODES = ("measured", "fixed")            # how 'auto' layers choose: spark_sparse.routing
AMP_DTYPES = ("bf16", "fp16")                    # what autocast runs in: spark_sparse.precision
PRECISIONS = ("fp32",) + AMP_DTYPES              # the benchmarks' --dtypes: spark_sparse.precision.DTYPES
AMP_CHOICES = ("auto",) + AMP_DTYPES + ("off",)  # training's --amp
ROUTING_HELP = ("how 'auto' layers choose their implementation: measured (time the candidates on first use, "
                "cached in the user's cache directory for later runs) or fixed (the rule table, reproducible) "
                "(default: $SPARK_SPARSE_ROUTING, else measured)")
BACKEND_HELP = "k×k convolution backend of the sparse encoder"
