"""The registry of unlearning methods. A method is one file in ``analyses/unlearn/methods/``: a config
dataclass (a ``MethodConfig``) and a function registered with ``@register``. Every module in that folder is
imported on first use, so adding a method is adding a file.

Two kinds of method:

- ``train`` (GA, NPO, RMU, ...): the function receives a ``TrainContext`` and its options and returns a
  ``TrainPlan`` (the per-step loss and, optionally, the parameters that train); the shared loop
  (``analyses.training.train``) runs it with the early stop on the forget accuracy;
- ``edit`` (Needle): the function edits ``ctx.work`` itself and returns an ``EditOutcome``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from analyses.unlearn.batches import Batch, Example, Sampler, make_batch
from analyses.unlearn.config import MethodConfig, UnlearnConfig, UnlearnError
from probes.data import QA, Concept
from probes.model import Model


@dataclass
class TrainContext:
    """What a method sees: the frozen reference (the caller's base model, never trained), the working
    copy that trains, the concept, the resolved config, the data pools and seeded samplers over them."""

    ref: Model
    work: Model
    concept: Concept
    config: UnlearnConfig
    forget_pool: list[Example]
    retain_pool: list[Example]
    generator: torch.Generator
    retain_qa: Sequence[QA] = ()
    before_accuracy: float = float("nan")
    checks: list[dict[str, float]] = field(default_factory=list)
    _forget: Sampler | None = None
    _retain: Sampler | None = None

    def sampler(self, pool: Sequence) -> Sampler:
        """A seeded sampler of ``config.batch_size`` items over ``pool`` (sharing the run's generator)."""
        return Sampler(pool, self.config.batch_size, self.generator)

    def forget_batch(self) -> Batch:
        if self._forget is None:
            self._forget = self.sampler(self.forget_pool)
        return make_batch(self.work, self._forget())

    def retain_batch(self) -> Batch:
        if self._retain is None:
            self._retain = self.sampler(self.retain_pool)
        return make_batch(self.work, self._retain())


@dataclass(frozen=True)
class TrainPlan:
    """A trained method's step: ``loss()`` for one optimizer step; ``parameters`` (names) overrides the
    config's ``trainable`` / ``layers`` choice."""

    loss: Callable[[], torch.Tensor]
    parameters: list[str] | None = None


@dataclass(frozen=True)
class EditOutcome:
    """What an edit method did: search steps, whether it stopped before its budget, and its options as
    resolved (e.g. the vectors it edited)."""

    steps: int
    stopped_early: bool
    options: MethodConfig


@dataclass(frozen=True)
class Method:
    """A registered method: its name, config class, kind, defaults of the shared knobs, whether it needs
    retain data, and the function that runs it."""

    name: str
    config: type[MethodConfig]
    kind: Literal["train", "edit"]
    run: Callable[[TrainContext, Any], Any]
    defaults: dict[str, Any]
    needs_retain: bool = False

    @property
    def summary(self) -> str:
        doc = (self.config.__doc__ or "").strip()
        return doc.split("\n\n")[0].replace("\n", " ")


LORA_LR = 1e-4  # default peak learning rate of a LoRA run (trainable="lora"): 5x the full methods' 2e-5
_REGISTRY: dict[str, Method] = {}
_loaded = False


def register(
    name: str,
    config: type[MethodConfig],
    *,
    kind: Literal["train", "edit"] = "train",
    needs_retain: bool = False,
    **defaults: Any,
) -> Callable[[Callable], Callable]:
    """Register the decorated function as method ``name``. ``defaults`` fill ``UnlearnConfig`` fields
    left at ``None`` (``steps``, ``lr``, ``trainable``)."""
    unknown = set(defaults) - {
        f for f in UnlearnConfig.__dataclass_fields__ if f not in ("method", "options")
    }
    if unknown:
        raise TypeError(f"method {name!r}: {sorted(unknown)} are not UnlearnConfig fields")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise TypeError(f"unlearning method {name!r} is registered twice")
        _REGISTRY[name] = Method(name, config, kind, fn, dict(defaults), needs_retain)
        return fn

    return wrap


def _load() -> None:
    """Import every module of ``analyses.unlearn.methods`` (each registers its method)."""
    global _loaded
    if _loaded:
        return
    package = importlib.import_module("analyses.unlearn.methods")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{info.name}")
    _loaded = True


def methods() -> dict[str, Method]:
    """All registered methods by name."""
    _load()
    return dict(_REGISTRY)


def method_names() -> tuple[str, ...]:
    return tuple(methods())


def get_method(name: str) -> Method:
    known = methods()
    if name not in known:
        raise UnlearnError(f"unknown unlearning method {name!r}", None, f"use one of {', '.join(known)}")
    return known[name]


def resolve(config: UnlearnConfig) -> UnlearnConfig:
    """``config`` with its method's defaults filled in and its options of the method's own type."""
    method = get_method(config.method)
    fill = {k: v for k, v in method.defaults.items() if getattr(config, k) is None}
    if config.trainable == "lora" and config.lr is None:
        fill["lr"] = LORA_LR  # B starts at zero: a low-rank update moves slower than the full weights
    options = config.options if config.options is not None else method.config()
    if not isinstance(options, method.config):
        raise UnlearnError(
            f"options of type {type(options).__name__} do not belong to method {config.method!r}",
            f"{config.method} takes {method.config.__name__}",
            f"pass options={method.config.__name__}(...) or leave options=None",
        )
    return dataclasses.replace(config, **fill, options=options)
