"""Weight edits: the one primitive by which vestige changes a model's weights.

Every ablation, noise perturbation and patch of an MLP value vector or an attention head's slice of
``W_O`` goes through ``apply_edit`` (permanent: what the Needle unlearning method does to its own copy)
or its context manager ``edited`` (temporary: the audit's interventions and the validation of concept
vectors), which copies the touched rows back **bitwise** on exit, also when the block raises or is
interrupted. ConceptVectors' reference code perturbed weights in place and never restored them, so its
noise accumulated across concepts; here nothing accumulates.

Units are ``VectorRef = (layer, neuron)`` for value vectors (row ``neuron`` of ``model.W_out(layer)``)
and ``Head = (layer, head)`` for attention heads (rows ``head * d_head : (head + 1) * d_head`` of
``model.W_O(layer)``). Modes:

- ``ablate``: set the rows to zero;
- ``noise``: add Gaussian noise; ``N(0, scale^2 I)`` (``scale_by="std"``, ConceptVectors' validation), or
  noise rescaled to ``scale`` times the row's own norm (``scale_by="norm"``, the Needle baseline);
- ``patch``: copy the same rows from ``source`` (e.g. the base model into the unlearned one).

``check_compatible`` is the one test that two models are versions of one model (same architecture,
shapes and tokenizer), and ``weights_checksum`` proves an edit was undone.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from probes.errors import MismatchError, VestigeError
from probes.model import Model, model_fingerprint

VectorRef = tuple[int, int]  # (layer, neuron) of an MLP value vector
Head = tuple[int, int]  # (layer, head)
EditMode = Literal["ablate", "noise", "patch"]
EDIT_MODES: tuple[str, ...] = ("ablate", "noise", "patch")
Unit = Literal["vector", "head"]


@dataclass(frozen=True)
class EditInfo:
    """What an edit did: its mode, how many units it touched, and for ``noise`` the mean of
    ``||noise|| / ||row||`` over them (0 otherwise)."""

    mode: str
    n_vectors: int
    noise_ratio: float


def as_refs(units: Any) -> list[tuple[int, int]]:
    """``(layer, index)`` pairs from pairs, objects with ``.layer`` and ``.neuron`` (a located concept
    vector), or a result with ``.refs()`` (a located set); duplicates dropped, order kept."""
    if hasattr(units, "refs"):
        units = units.refs()
    out = []
    for u in units:
        if hasattr(u, "layer") and hasattr(u, "neuron"):
            out.append((int(u.layer), int(u.neuron)))
        else:
            out.append((int(u[0]), int(u[1])))
    return list(dict.fromkeys(out))


def _rows(model: Model, unit: Unit, layer: int, index: int) -> torch.Tensor:
    """The parameter view that ``(layer, index)`` names; writing into it edits the model."""
    c = model.cfg
    if unit == "vector":
        if not (0 <= layer < c.n_layers and 0 <= index < c.d_mlp):
            raise VestigeError(
                f"value vector ({layer}, {index}) does not exist",
                f"the model has {c.n_layers} layers of {c.d_mlp} neurons",
                "pass (layer, neuron) pairs located on this model",
            )
        return model.W_out(layer)[index]
    if unit == "head":
        if not (0 <= layer < c.n_layers and 0 <= index < c.n_heads):
            raise VestigeError(
                f"attention head ({layer}, {index}) does not exist",
                f"the model has {c.n_layers} layers of {c.n_heads} heads",
                "pass (layer, head) pairs of this model",
            )
        return model.W_O(layer)[index * c.d_head : (index + 1) * c.d_head]
    raise VestigeError(f"unknown edit unit {unit!r}", None, "use unit='vector' or unit='head'")


def _check_mode(mode: str, scale_by: str, source: Model | None) -> None:
    if mode not in EDIT_MODES:
        raise VestigeError(
            f"unknown edit mode {mode!r}", None, f"use one of {', '.join(repr(m) for m in EDIT_MODES)}"
        )
    if scale_by not in ("std", "norm"):
        raise VestigeError(f"unknown noise scale {scale_by!r}", None, "use scale_by='std' or scale_by='norm'")
    if mode == "patch" and source is None:
        raise VestigeError(
            "a patch needs the model to copy from", "source=None", "pass source=<the base model>"
        )


@torch.no_grad()
def _apply(
    model: Model,
    units: Sequence[tuple[int, int]],
    mode: str,
    *,
    unit: Unit,
    scale: float,
    scale_by: str,
    seed: int,
    source: Model | None,
    saved: list[tuple[torch.Tensor, torch.Tensor]] | None,
) -> EditInfo:
    """Edit ``units`` of ``model`` in place; with ``saved``, append (view, original copy) before each
    write so that the caller can undo it. Noise is drawn on the CPU from ``seed`` (one draw per unit, in
    order), so an edit is the same on every device."""
    _check_mode(mode, scale_by, source)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ratios = []
    for layer, index in units:
        rows = _rows(model, unit, layer, index)
        if saved is not None:
            saved.append((rows, rows.detach().clone()))
        if mode == "ablate":
            rows.zero_()
        elif mode == "patch":
            rows.copy_(_rows(source, unit, layer, index).to(rows))  # type: ignore[arg-type]
        else:
            noise = torch.randn(rows.shape, generator=gen, dtype=torch.float32)
            norm = rows.float().norm().clamp_min(1e-12)
            if scale_by == "norm":
                noise = noise * (scale * norm.cpu() / noise.norm())
            else:
                noise = noise * scale
            ratios.append(float(noise.norm() / norm.cpu()))
            rows.add_(noise.to(rows.device, rows.dtype))
    return EditInfo(mode, len(units), sum(ratios) / len(ratios) if ratios else 0.0)


def apply_edit(
    model: Model,
    units: Any,
    mode: EditMode = "ablate",
    *,
    unit: Unit = "vector",
    scale: float = 0.1,
    scale_by: Literal["std", "norm"] = "std",
    seed: int = 0,
    source: Model | None = None,
    undo: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> EditInfo:
    """Edit ``units`` of ``model`` in place (see the module docstring for the modes). ``undo``, when
    given, receives a (view, original copy) pair before each write; ``edited`` uses it to restore."""
    return _apply(
        model,
        as_refs(units),
        mode,
        unit=unit,
        scale=scale,
        scale_by=scale_by,
        seed=seed,
        source=source,
        saved=undo,
    )


@contextlib.contextmanager
def edited(model: Model, units: Any, mode: EditMode = "ablate", **options: Any) -> Iterator[EditInfo]:
    """``apply_edit(model, units, mode, **options)`` inside the block; the touched rows are copied back
    bitwise on exit, also when the block (or the edit itself, half-way) raises. Every call draws fresh
    noise from its ``seed``."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        yield apply_edit(model, units, mode, undo=saved, **options)
    finally:
        restore(saved)


@torch.no_grad()
def restore(undo: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Copy back the rows that ``apply_edit(..., undo=undo)`` saved, last edit first, and empty ``undo``."""
    for rows, original in reversed(undo):
        rows.copy_(original)
    undo.clear()


def edited_vectors(
    model: Model,
    vectors: Any,
    mode: EditMode = "ablate",
    scale: float = 0.1,
    seed: int = 0,
    *,
    scale_by: Literal["std", "norm"] = "std",
    source: Model | None = None,
) -> contextlib.AbstractContextManager[EditInfo]:
    """``edited`` on value vectors ``(layer, neuron)``: ablate, add ``N(0, scale^2 I)`` noise, or patch
    them from ``source``, restored bitwise on exit."""
    return edited(
        model, vectors, mode, unit="vector", scale=scale, scale_by=scale_by, seed=seed, source=source
    )


def patched_vectors(
    target: Model, source: Model, vectors: Any
) -> contextlib.AbstractContextManager[EditInfo]:
    """Copy the value vectors ``vectors`` of ``source`` (e.g. the base) into ``target`` (the unlearned
    model) inside the block; ``target``'s own rows come back bitwise on exit."""
    return edited(target, vectors, "patch", unit="vector", source=source)


def zeroed_heads(model: Model, heads: Iterable[Head]) -> contextlib.AbstractContextManager[EditInfo]:
    """Zero the output-projection rows of ``heads`` (their slice of ``W_O``): the same function as zeroing
    their ``hook_z`` (the attention output bias stays), but as a weight edit, so it also holds in copies
    of the model (e.g. inside a relearning attack). Restored bitwise on exit."""
    return edited(model, sorted(set(as_refs(heads))), "ablate", unit="head")


def check_compatible(base: Model, other: Model, *, what: str = "the base and the unlearned model") -> None:
    """Refuse, before any work, two models that differ in architecture, shapes or tokenizer."""
    fb, fo = model_fingerprint(base), model_fingerprint(other)
    diff = {k: (fb[k], fo[k]) for k in fb if fb[k] != fo[k]}
    if diff:
        listed = "; ".join(f"{k}: {a} vs {b}" for k, (a, b) in diff.items())
        raise MismatchError(
            f"{what} are not two versions of one model",
            f"they differ in {listed}",
            "compare a model with an unlearned copy of itself (same architecture, same tokenizer)",
        )


def weights_checksum(model: Model) -> str:
    """A hash of every parameter's bytes (to prove an edit was undone)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
