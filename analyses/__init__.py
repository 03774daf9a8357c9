"""vestige analyses: experiments composed of probes (unlearning, audit, interventions, report, CLI, bench)."""
