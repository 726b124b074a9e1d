"""The names the command line offers for ``--routing`` and ``--amp``, in a module without torch: the
parsers read them here, so ``spark-sparse pretrain --help`` or a mistyped option answers without
loading torch. ``routing`` and ``precision`` give them their meaning."""
ROUTING_MODES = ("measured", "fixed")            # how 'auto' layers choose: spark_sparse.routing
AMP_DTYPES = ("bf16", "fp16")                    # what autocast runs in: spark_sparse.precision
AMP_CHOICES = ("auto",) + AMP_DTYPES + ("off",)  # training's --amp
