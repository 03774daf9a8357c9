"""``vestige bench``: the timing harness (``harness``), the entries (one module per topic in ``entries/``,
each registering with ``harness.benchmark``) and the suite that loads and runs them (``suite``)."""
