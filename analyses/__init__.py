"""vestige analyses: experiments composed of probes (unlearning, audit, interventions, report, CLI, bench)."""

import probes.environment  # noqa: F401 - first: process settings that must precede loading torch
