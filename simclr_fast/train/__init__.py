"""``simclr-fast train``: the reference SimCLR training loop (see :mod:`simclr_fast.train.loop`)."""
