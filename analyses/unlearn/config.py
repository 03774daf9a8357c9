"""The configuration of an unlearning run: the knobs every method shares (``UnlearnConfig``) and the base
class of each method's own options (``MethodConfig``, one subclass per file in ``methods/``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from probes.errors import VestigeError
from probes.results import Result


class UnlearnError(VestigeError):
    """An unlearning run cannot start with the given method, data or parameters."""


@dataclass(frozen=True)
class MethodConfig(Result):
    """A method's own options. Subclasses are frozen dataclasses; a field's ``metadata`` may carry
    ``help`` (the CLI help), ``choices`` and ``parse`` (a function from the CLI string to the value). The
    CLI flag of field ``f`` of method ``m`` is ``--m-f`` (underscores as dashes)."""


@dataclass(frozen=True)
class UnlearnConfig(Result):
    """The knobs every method shares. ``None`` fields take the method's default (``Method.defaults``);
    ``options`` holds the method's own config (``None``: its defaults)."""

    method: str = "ga"
    steps: int | None = field(default=None, metadata={"help": "optimizer steps (default: per method)"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default: per method)"})
    batch_size: int = field(default=8, metadata={"help": "forget (and retain) sequences per step"})
    window: int = field(default=64, metadata={"help": "tokens per forget-text window"})
    warmup_steps: int = field(default=2, metadata={"help": "steps of linear learning-rate warm-up"})
    warmup_start: float = field(
        default=0.3, metadata={"help": "first step's learning rate as a fraction of --lr (never zero)"}
    )
    schedule: str = field(
        default="constant",
        metadata={"choices": ("constant", "linear"), "help": "after warm-up: constant, or linear to 10%"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clipping"})
    trainable: str | None = field(
        default=None,
        metadata={
            "choices": ("all", "mlp", "lora"),
            "help": "which parameters train (default: mlp); lora: a rank --lora-rank update of every block "
            "linear weight (within --layers), saved as a PEFT adapter",
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "with --trainable lora: the update's rank r"})
    lora_alpha: float = field(
        default=16.0, metadata={"help": "with --trainable lora: the update is scaled by alpha / r"}
    )
    layers: tuple[int, int] | None = field(
        default=None, metadata={"help": "[START, STOP) blocks whose parameters train (default: all)"}
    )
    stop_fraction: float | None = field(
        default=0.25,
        metadata={"help": "stop when forget accuracy <= this fraction of its start ('none': every step)"},
    )
    check_every: int = field(default=5, metadata={"help": "steps between early-stop checks"})
    seed: int = 0
    heldout: float = field(
        default=0.5,
        metadata={
            "help": "hold out this fraction of the concept's QA: nothing trains or stops on it, and the audit "
            "of the run scores those items, so it measures forgetting, not memorisation (0: train on every "
            "item; the audit then refuses unless told --allow-trained-items)"
        },
    )
    heldout_seed: int = field(default=0, metadata={"help": "seed of the held-out split"})
    options: MethodConfig | None = field(default=None, metadata={"cli": False})
