"""Unlearned models published as PEFT adapters (LoRA and the other adapters PEFT can merge).

A directory with an ``adapter_config.json`` is not a model on its own: it is a low-rank (or other) update of
a base model. ``load_adapter`` loads the base (the ``base`` given, else the one the adapter names in
``base_model_name_or_path``, resolved as any model spec, offline rules included), applies the adapter with
PEFT and merges it into the weights in memory, so every instrument sees an ordinary model whose weights are
``W + (alpha / r) B A``. The base passed in is never modified (the adapter goes onto its copy).

As for full checkpoints, only safetensors load by default: an adapter saved as ``adapter_model.bin`` needs
``allow_pickle=True``. PEFT is an optional dependency (``pip install peft`` or ``vestige[peft]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from probes.errors import ModelLoadError

if TYPE_CHECKING:
    from probes.model import Model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a PEFT ``adapter_config.json``."""
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_config(path: str | Path) -> dict:
    """The adapter's ``adapter_config.json`` as a dict (a clear error when it is not valid JSON)."""
    file = Path(path).expanduser() / ADAPTER_CONFIG
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{file} is not valid JSON",
            f"{type(e).__name__}: {e}",
            "re-save the adapter with peft (model.save_pretrained(path))",
        ) from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} holds no JSON object", None, "re-save the adapter with peft")
    return config


def load_adapter(
    path: str | Path,
    base: str | Model | None = None,
    *,
    allow_pickle: bool = False,
    **load_kwargs,
) -> Model:
    """The model ``base + adapter`` with the adapter at ``path`` merged into its weights.

    ``base``: a loaded ``Model`` (copied, never modified), a model spec, or None for the adapter's own
    ``base_model_name_or_path``. ``load_kwargs`` (device, dtype, trust_remote_code, ...) go to
    ``load_model`` when the base is loaded here."""
    from probes.model import Model, load_model

    path = Path(path).expanduser()
    config = adapter_config(path)
    if not (path / ADAPTER_SAFETENSORS).is_file():
        if (path / ADAPTER_PICKLE).is_file() and not allow_pickle:
            raise ModelLoadError(
                f"the adapter in {str(path)!r} is a pickle file ({ADAPTER_PICKLE})",
                "only safetensors load by default: unpickling can run arbitrary code",
                "re-save it as safetensors (peft's save_pretrained does by default), or pass allow_pickle=True "
                "(--allow-pickle) if you trust the file",
            )
        if not (path / ADAPTER_PICKLE).is_file():
            raise ModelLoadError(
                f"{str(path)!r} has {ADAPTER_CONFIG} but no adapter weights",
                f"neither {ADAPTER_SAFETENSORS} nor {ADAPTER_PICKLE} is there",
                "copy the adapter's weights file next to its config",
            )
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModelLoadError(
            f"{str(path)!r} is a PEFT adapter, and peft is not installed",
            "merging an adapter into its base needs the peft package",
            "pip install peft   (or pip install 'vestige[peft]')",
        ) from e
    named = config.get("base_model_name_or_path")
    if base is None:
        if not named:
            raise ModelLoadError(
                f"the adapter in {str(path)!r} names no base model",
                f"its {ADAPTER_CONFIG} has no base_model_name_or_path",
                "pass the base model (base=..., --base on the command line)",
            )
        try:
            base = load_model(named, allow_pickle=allow_pickle, **load_kwargs)
        except ModelLoadError as e:
            raise ModelLoadError(
                f"cannot load the base model {named!r} that the adapter in {str(path)!r} names",
                e.problem,
                "pass the base explicitly (base=..., --base on the command line), e.g. a local directory",
            ) from e
    elif isinstance(base, str):
        base = load_model(base, allow_pickle=allow_pickle, **load_kwargs)
    work = base.copy()
    try:
        peft_model = PeftModel.from_pretrained(work.hf, str(path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"the adapter in {str(path)!r} does not fit the base model {base.name!r}",
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
            + (f" (the adapter was trained on {named!r})" if named else ""),
            "pass the base model the adapter was trained on (--base)",
        ) from e
    merged = peft_model.merge_and_unload()
    merged.eval()
    return Model(merged, base.tokenizer, name=str(path))
