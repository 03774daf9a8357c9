"""Interventions on traces in the unlearned model: ablate them, or patch them back from the base model.

Every edit happens inside a context manager that restores the exact original weights on exit, also when
the block raises (ConceptVectors' reference code perturbed weights in place and never restored them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from probes.model import Model, model_fingerprint

VectorRef = tuple[int, int]


def check_compatible(base: Model, other: Model) -> None:
    """Refuse, before any work, two models that differ in architecture, shapes or tokenizer."""
    from probes.errors import MismatchError

    fb, fo = model_fingerprint(base), model_fingerprint(other)
    diff = {k: (fb[k], fo[k]) for k in fb if fb[k] != fo[k]}
    if diff:
        what = "; ".join(f"{k}: {a} vs {b}" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise MismatchError(
            "the base and the unlearned model are not two versions of one model",
            f"they differ in {what}",
            "audit an unlearned checkpoint against the model it was unlearned from (same architecture, "
            "same tokenizer)",
        )


@contextlib.contextmanager
def patched_vectors(target: Model, source: Model, vectors: Sequence[VectorRef]) -> Iterator[int]:
    """Copy the value vectors ``vectors`` of ``source`` (e.g. the base) into ``target`` (the unlearned
    model) inside the block; ``target``'s own rows come back bitwise on exit. Yields the count."""
    refs = list(dict.fromkeys((int(l), int(n)) for l, n in vectors))
    saved: list[tuple[int, int, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer, neuron in refs:
                row = target.W_out(layer)[neuron]
                saved.append((layer, neuron, row.detach().clone()))
                row.copy_(source.W_out(layer)[neuron].to(row))
        yield len(refs)
    finally:
        with torch.no_grad():
            for layer, neuron, original in reversed(saved):
                target.W_out(layer)[neuron].copy_(original)


def weights_checksum(model: Model) -> str:
    """A hash of every parameter's bytes (to prove an edit was undone)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
