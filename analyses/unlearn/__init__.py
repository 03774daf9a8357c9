"""Unlearning baselines that produce the models vestige audits (docs/unlearning.md).

Methods, one file each in ``methods/`` with its own config dataclass, registered by name
(``registry.register``): ``ga`` (gradient ascent), ``gd`` (gradient difference), ``npo`` and ``npo_kl``
(negative preference optimisation, Zhang et al. 2024), ``dpo_idk`` (DPO with "I don't know" preferred,
TOFU), ``rmu`` (representation misdirection, WMDP, Li et al. 2024) and ``needle`` (ablate or perturb only
the located concept vectors, ConceptVectors, Hong et al. 2024).

Conventions (open-unlearning / TOFU): the NLL of a sequence is **summed** over its target tokens and
averaged over the batch; beta = 0.1; the frozen reference model is the caller's base model itself.

    from analyses.unlearn import UnlearnConfig, unlearn
    from analyses.unlearn.methods.npo import NPOConfig
    run = unlearn(model, concept, UnlearnConfig(method="npo", options=NPOConfig(beta=0.2)))
"""

from analyses.unlearn.batches import (
    Batch,
    Example,
    hidden_at,
    make_batch,
    qa_examples,
    sequence_nll,
    text_windows,
)
from analyses.unlearn.config import MethodConfig, UnlearnConfig, UnlearnError
from analyses.unlearn.methods.dpo_idk import DPOIDKConfig, dpo_loss
from analyses.unlearn.methods.ga import GAConfig, ga_loss
from analyses.unlearn.methods.gd import GDConfig, gd_loss
from analyses.unlearn.methods.needle import NeedleConfig, needle_edit, needle_search
from analyses.unlearn.methods.npo import NPOConfig, npo_loss
from analyses.unlearn.methods.npo_kl import NPOKLConfig, npo_kl_loss, retain_kl
from analyses.unlearn.methods.rmu import RMUConfig, rmu_loss
from analyses.unlearn.registry import Method, get_method, method_names, methods, register, resolve
from analyses.unlearn.run import (
    QAStats,
    UnlearnResult,
    evaluate,
    lr_factor,
    retain_qa_for,
    retain_texts_for,
    trainable_parameters,
    unlearn,
)

METHODS: tuple[str, ...] = method_names()

__all__ = [
    "METHODS",
    "Batch",
    "DPOIDKConfig",
    "Example",
    "GAConfig",
    "GDConfig",
    "Method",
    "MethodConfig",
    "NPOConfig",
    "NPOKLConfig",
    "NeedleConfig",
    "QAStats",
    "RMUConfig",
    "UnlearnConfig",
    "UnlearnError",
    "UnlearnResult",
    "dpo_loss",
    "evaluate",
    "ga_loss",
    "gd_loss",
    "get_method",
    "hidden_at",
    "lr_factor",
    "make_batch",
    "method_names",
    "methods",
    "needle_edit",
    "needle_search",
    "npo_kl_loss",
    "npo_loss",
    "qa_examples",
    "register",
    "resolve",
    "retain_kl",
    "retain_qa_for",
    "retain_texts_for",
    "rmu_loss",
    "sequence_nll",
    "text_windows",
    "trainable_parameters",
    "unlearn",
]
