"""Fine-tuning a model for an attack, lean where it can be: which parameters train (``PARAMS``) and the
one context manager that trains them (``finetuned``).

The training attacks (relearning on answer-free text, Deeb & Roger's fact relearning, the relearning
curves) move some of a model's parameters for a few AdamW steps and then score it. ``all`` fine-tunes a
copy; every other choice is lean: the audited model itself trains, with gradients and optimizer state only
for the chosen parameters, and is put back exactly afterwards:

- ``all``: every parameter (the audit's default).
- ``norms``: only the normalisation weights (and biases) - a few thousand numbers that rescale features.
- ``biases``: only the bias vectors (models without biases, e.g. Llama-style ones, are refused).
- ``layer:K``: only block ``K``.
- ``lora``: a rank-``lora_rank`` update ``B A`` (``B`` zero at the start, ``A`` seeded, scaled by
  ``lora_alpha / lora_rank``; Hu et al. 2021) added to every linear weight of the blocks through a
  forward hook through its two factors (``analyses.lora``), the base weights frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from analyses.lora import attach_lora, block_linears, covers_every_block_linear, has_lora, remove_lora
from analyses.training import activation_checkpointing, micro_batches, train
from probes.errors import VestigeError
from probes.memory import ACTIVATION_FRACTION
from probes.model import Model, check_resident
from probes.stash import Stash

PARAMS = ("all", "norms", "biases", "layer:K", "lora")


class RelearnError(VestigeError):
    """A relearning variant cannot be set up on this model."""


def is_variant(params: str) -> bool:
    """Whether ``params`` names one of ``PARAMS`` (``layer:K`` with a non-negative integer K)."""
    return params in ("all", "norms", "biases", "lora") or (
        params.startswith("layer:") and params[len("layer:") :].isdigit()
    )


def micro_batch_tokens(model: Model, seq_len: int = 64, fraction: float = ACTIVATION_FRACTION) -> int:
    """The tokens one micro-batch of ``finetuned`` may hold: the most whose training activations
    (``probes.memory.training_activation_bytes`` for sequences of ``seq_len`` tokens, with activation
    checkpointing where the model's blocks take it) stay within ``fraction`` of the model's parameter
    bytes; at least one sequence. SmolLM2-135M in float32, checkpointed: 75 tokens (0.72 MB each, most
    of it the logits and their log-softmax, against 538 MB of weights)."""
    from analyses.training import checkpointed_blocks
    from probes.memory import parameter_bytes, training_activation_bytes

    bytes_per_number = torch.finfo(model.dtype).bits // 8
    checkpointed = bool(checkpointed_blocks(model.hf))
    per_token = (
        training_activation_bytes(model.cfg, 1, seq_len, bytes_per_number, checkpointed=checkpointed)
        / seq_len
    )
    return max(1, int(fraction * parameter_bytes(model.hf) / per_token))


def full_training_bytes(model: Model) -> int:
    """What ``params="all"`` adds beside the resident models: the gradients and AdamW's two moments of every
    weight (float32: ``3 P B``; half precision, through float32 masters: ``P B + 16 P``), plus a
    micro-batch's activations (``ACTIVATION_FRACTION`` of the weights). The model trains in place: no copy of it (the
    originals wait off the device, ``probes.stash``)."""
    from probes.memory import parameter_bytes

    weights = parameter_bytes(model.hf)
    n = sum(p.numel() for p in model.hf.parameters())
    state = 3 * weights if model.dtype == torch.float32 else weights + 16 * n
    return state + int(ACTIVATION_FRACTION * weights)


def free_bytes(model: Model) -> int:
    """Memory free now where ``model``'s weights are: the CUDA devices' free memory (summed over a device
    map's GPUs), else the host's MemAvailable."""
    from probes.memory import host_memory

    cuda = sorted({p.device.index or 0 for p in model.hf.parameters() if p.device.type == "cuda"})
    if cuda:
        return sum(int(torch.cuda.mem_get_info(i)[0]) for i in cuda)
    return host_memory()[1]


def lean_unless_it_fits(model: Model, params: str) -> tuple[str, str | None]:
    """``params``, or ``lora`` with a note saying why when ``params`` is ``all`` and training every weight
    (``full_training_bytes``) would not fit the memory free now (``free_bytes``): an audit that would run
    out of memory half-way trains lean instead, and says so."""
    if params != "all":
        return params, None
    need, free = full_training_bytes(model), free_bytes(model)
    if need <= free:
        return params, None
    gib = 2**30
    return "lora", (
        f"relearning fine-tunes a rank-8 LoRA update instead of every weight: the gradients and optimizer "
        f"state of every weight need {need / gib:.1f} GiB and {free / gib:.1f} GiB is free "
        "(pass the parameters to train explicitly to choose)"
    )


def select_parameters(
    work: Model, params: str, *, lora_rank: int = 8, lora_alpha: float = 16.0, seed: int = 0
) -> list[torch.nn.Parameter]:
    """Set ``work`` up for the variant ``params`` (one of ``PARAMS``; ``layer:K`` with a block index) and
    return the parameters that train; every other parameter of ``work`` is frozen. ``lora`` adds its
    update to ``work`` (forward hooks through the two factors; its weights stay the base ones)."""
    named = list(work.hf.named_parameters())
    for _, p in named:
        p.requires_grad_(False)
    prefix = work._paths["layers"] + "."
    if params == "all":
        chosen = [p for _, p in named]
    elif params == "norms":
        norms = [m for m in work.hf.modules() if "norm" in type(m).__name__.lower()]
        chosen = [p for m in norms for p in m.parameters(recurse=False)]
    elif params == "biases":
        chosen = [p for n, p in named if n.endswith(".bias")]
    elif params.startswith("layer:"):
        try:
            k = int(params.split(":", 1)[1])
        except ValueError:
            k = -1
        if not 0 <= k < work.cfg.n_layers:
            raise RelearnError(
                f"relearning variant {params!r} names no block",
                f"the model has blocks 0 to {work.cfg.n_layers - 1}",
                f"use layer:K with K in [0, {work.cfg.n_layers})",
            )
        chosen = [p for n, p in named if n.startswith(f"{prefix}{k}.")]
    elif params == "lora":
        chosen = attach_lora(work, block_linears(work), rank=lora_rank, alpha=lora_alpha, seed=seed)
    else:
        raise RelearnError(
            f"unknown relearning variant {params!r}",
            f"the variants are {PARAMS}",
            "pick one of them (layer:K with a block index)",
        )
    if not chosen:
        raise RelearnError(
            f"relearning variant {params!r} selects no parameter of {work.name!r}",
            "the model has no such parameters (e.g. a Llama-style model has no biases)",
            f"pick another of {PARAMS}",
        )
    for p in chosen:
        p.requires_grad_(True)
    return chosen


@contextmanager
def finetuned(
    model: Model,
    examples_of,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    desc: str,
    params: str = "all",
    in_place: bool | None = None,
    lora_rank: int = 8,
    after_step=None,
) -> Iterator[Model]:
    """``model`` after ``steps`` AdamW steps on batches of ``batch_size`` drawn (seeded) from
    ``examples_of(work)``, the summed NLL of their targets averaged over the batch; ``params`` chooses the
    parameters that train (``analyses.relearning.PARAMS``).

    A step's batch runs as micro-batches of at most ``micro_batch_tokens(model)`` tokens (at least one
    example each) whose gradients add up to the whole batch's, with activation checkpointing
    (``analyses.training.activation_checkpointing``: the same gradient, one more forward pass), so the
    activations held at once stay a small fixed fraction of the weights whatever ``batch_size``.

    Every choice trains ``model`` itself, in place, and puts it back bit for bit on leaving the block, also
    on an exception; no copy of the model is made. The weights that train are saved first in a
    ``probes.stash.Stash`` (a CUDA model's in host memory, a CPU model's in a temporary file), so the
    device holds only the model, the chosen parameters' gradients and AdamW's two moments for them:
    ``all`` three times the weights on top of the model (a copy would add a fourth), the lean choices
    almost nothing (``lora``: a rank-8 update beside the frozen weights, nothing to save; ``norms``,
    ``biases``, ``layer:K``: just those tensors). The weights outside the choice are never written.
    ``in_place=False`` fine-tunes a copy whatever the choice (a model that must outlive the block); so do
    ``lora`` and ``all`` on a model whose blocks the TransformerLens bridge re-wired (GPT-2).
    ``after_step(step, loss)`` runs after each step with the model in its fine-tuned state (e.g. to score
    checkpoints)."""
    from analyses.unlearn.batches import make_batch, sequence_nll

    in_place = True if in_place is None else in_place
    if in_place and params in ("lora", "all"):
        # the TransformerLens bridge re-wires GPT-2's attention into layers of its own beside the
        # checkpoint's: LoRA could not reach every block weight, and training every parameter would train
        # both (the checkpoint's unused); such a model is fine-tuned as a copy without the bridge
        in_place = covers_every_block_linear(model)
    if in_place:
        check_resident(model, "fine-tuning the model in place")
    work = model if in_place else model.copy()
    stash = Stash()
    was_training = work.hf.training
    # in place, every requires_grad flag comes back as it was (Model.frozen), also on an exception
    with work.frozen() if in_place else nullcontext(), _restored(work, stash, was_training, in_place):
        if in_place and has_lora(work):
            raise RuntimeError(f"{work.name!r} already carries a LoRA update; merge or remove it first")
        trainable = select_parameters(work, params, lora_rank=lora_rank, seed=seed)
        if in_place and params != "lora":
            for p in trainable:
                stash.save(p)
        examples = examples_of(work)
        gen = torch.Generator().manual_seed(seed)
        work.hf.train(False)

        budget = micro_batch_tokens(work, max((len(e.ids) for e in examples), default=1))

        def step_loss(step: int) -> Iterator[torch.Tensor]:
            pick = torch.randperm(len(examples), generator=gen)[:batch_size].tolist()
            chosen = [examples[i] for i in pick]
            for group in micro_batches(chosen, lambda e: len(e.ids), budget):
                # checkpointed forward (its backward recomputes the blocks); only the loss's forward: a
                # checkpointed block drops the key/value cache, which ``after_step``'s scoring may decode with
                with activation_checkpointing(work.hf):
                    part = sequence_nll(work, make_batch(work, group)).sum() / len(chosen)
                yield part

        train(trainable, step_loss, steps, lr=lr, desc=desc, after_step=after_step)
        for p in trainable:
            p.grad = None
        yield work


@contextmanager
def _restored(work: Model, stash: Stash, was_training: bool, in_place: bool) -> Iterator[None]:
    """On leaving (also on an exception): ``work``'s stashed weights written back, its LoRA update removed,
    no gradient left and its train/eval mode as it was (in place); the stash's file removed."""
    try:
        yield
    finally:
        if in_place:
            stash.restore()
            remove_lora(work)
            for p in work.hf.parameters():
                p.grad = None
            work.hf.train(was_training)
        stash.close()
