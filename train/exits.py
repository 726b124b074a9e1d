"""The exit statuses a pre-training process ends with on purpose (besides 0, 1 and 128 + a signal),
in one place: the trainer returns them and the launcher passes them on."""
EXIT_BAD_INPUT = 2    # refused before training: an impossible option or an --out it must not use
EXIT_NON_FINITE = 3   # the loss or a gradient became NaN/infinite: stopped before touching the weights
