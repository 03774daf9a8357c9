"""The audit: is the concept removed from the unlearned model, or only suppressed? (docs/audit.md)

``audit(base, unlearned, concept)`` runs, on both models: behaviour with attacks and relearning; concept
vectors located on the base and compared on the unlearned (Hong et al. 2024); the logit lens of the
answers; memory heads, linear probes and CHES; then interventions in the unlearned model (ablate the
traces; patch them back from the base) and measures again. Every trace family is then measured per item on
the forget concept, a control (facts the base knows that were not targeted) and a knowledge floor (facts
the base never knew), and called present / gone / inconclusive from bootstrap intervals
(``traces``, ``rule``); the verdict follows from those calls. Each stage is cached as JSON in
``out/stages`` under a key of the models' weights, the concept and the config, so an interrupted audit
resumes where it stopped. The verdict rule is ``VERDICT_RULE`` (also printed in the report).

Layout: ``config`` (AuditConfig), ``stages`` (one function per trace family), ``cache`` (the stage cache
and the base-side memo), ``traces`` (per-item values of every family on the three item sets), ``rule`` (the calls and the verdict), ``attacks`` (each attack alone: net
recovery over the floor), ``result`` (AuditResult), ``report`` (the HTML page, with the attack x model heat map),
``runner`` (``audit``).
"""

from analyses.audit.cache import BASE_MEMO, BaseMemo, StageCache
from analyses.audit.config import AuditConfig
from analyses.audit.report import attack_heatmap, audit_report, verdict_table
from analyses.audit.result import VERDICT_RULE, AuditResult
from analyses.audit.rule import FAMILIES, TraceCall, call_family, call_vectors, verdict
from analyses.audit.runner import audit

__all__ = [
    "BASE_MEMO",
    "VERDICT_RULE",
    "AuditConfig",
    "AuditResult",
    "BaseMemo",
    "FAMILIES",
    "StageCache",
    "TraceCall",
    "attack_heatmap",
    "audit",
    "audit_report",
    "call_family",
    "call_vectors",
    "verdict",
    "verdict_table",
]
