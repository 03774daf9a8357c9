"""NaN and inf detection: a diverged unlearning run must be named, with the layer, not become a NaN table.

``check_finite`` scans every parameter (cheap: one ``isfinite`` pass over the weights, about 0.1 s for
SmolLM2 on a CPU) and names the first one holding NaN or inf and its block. ``check_activations`` runs one
forward pass with hooks on the embedding and on ``resid_post`` of every block and names the first block
whose output is not finite (NaN weights are not the only cause: an overflow in half precision is another).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from probes.errors import NonFiniteError

if TYPE_CHECKING:
    from probes.model import Model

_FIX = (
    "re-run the unlearning with a lower learning rate or gradient clipping, or load an earlier checkpoint; "
    "in float16 try float32 or bfloat16"
)


def parameter_layer(model: Model, name: str) -> int | None:
    """The block index of the parameter ``name`` (native HF name), or None outside the blocks."""
    prefix = model._paths["layers"] + "."
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _where(layer: int | None) -> str:
    return f"layer {layer}" if layer is not None else "outside the transformer blocks"


def first_nonfinite_parameter(model: Model) -> tuple[str, int | None, int, int] | None:
    """``(name, layer, n_nan, n_inf)`` of the first parameter (in module order) with NaN or inf, else None."""
    for name, tensor in model.state_dict().items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        return name, parameter_layer(model, name), n_nan, n_inf
    return None


def check_finite(*models: Model) -> None:
    """Raise ``NonFiniteError`` naming the first parameter (and its layer) that holds NaN or inf."""
    for model in models:
        bad = first_nonfinite_parameter(model)
        if bad is None:
            continue
        name, layer, n_nan, n_inf = bad
        err = NonFiniteError(
            f"model {model.name!r}: weight {name} ({_where(layer)}) holds {n_nan} NaN and {n_inf} inf values",
            "the weights are not finite (a diverged training or unlearning run, or a corrupted checkpoint); "
            "every measurement downstream would be NaN",
            _FIX,
        )
        err.parameter, err.layer = name, layer
        raise err


@torch.no_grad()
def first_nonfinite_layer(model: Model, texts: Sequence[str]) -> int | None:
    """The first block whose ``resid_post`` is not finite on ``texts`` (-1: already the embedding), else
    None. One forward pass with hooks on every block."""
    from probes import hooks

    names = [hooks.resid_pre(0)] + hooks.all_layers(hooks.resid_post, model.cfg.n_layers)
    ids, mask = model.tokenize(list(texts), padding_side="left")
    _, cache = hooks.run_with_cache(model, ids, names, mask, logits_to_keep=1)
    keep = mask.bool()
    for layer, name in enumerate(names, start=-1):
        if not bool(torch.isfinite(cache[name][keep]).all()):
            return layer
    return None


def check_activations(model: Model, texts: Sequence[str]) -> None:
    """Raise ``NonFiniteError`` naming the first layer whose output (``resid_post``) is NaN or inf on
    ``texts``; also when the logits are the only non-finite values."""
    layer = first_nonfinite_layer(model, texts)
    if layer is None:
        ids, mask = model.tokenize(list(texts), padding_side="left")
        with torch.no_grad():
            logits = model.forward(ids, mask).logits
        if bool(torch.isfinite(logits[mask.bool()]).all()):
            return
        where = "the logits (after the final norm and unembedding)"
    else:
        where = "the embedding output" if layer < 0 else f"the output of layer {layer} (resid_post)"
    bad = first_nonfinite_parameter(model)
    cause = (
        f"the first non-finite weight is {bad[0]} ({_where(bad[1])})"
        if bad
        else "all weights are finite: an overflow in the forward pass (e.g. float16)"
    )
    err = NonFiniteError(f"model {model.name!r}: NaN or inf activations first appear in {where}", cause, _FIX)
    err.layer = layer
    raise err
