"""One file per unlearning method; each registers itself with ``analyses.unlearn.registry.register``.
Every module here is imported by the registry on first use."""
