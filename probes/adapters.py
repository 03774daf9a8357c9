"""Unlearned models published as PEFT adapters (LoRA and the other adapters PEFT can merge).

A directory with an ``adapter_config.json`` is not a model on its own: it is a low-rank (or other) update of
a base model. ``load_model(adapter_dir, base=...)`` loads the base (the ``base`` given, else the one the
adapter names in ``base_model_name_or_path``, resolved as any model spec, offline rules included), and
``merge_adapter`` applies the adapter with PEFT to a copy of it and merges it into the weights in memory, so
every instrument sees an ordinary model whose weights are ``W + (alpha / r) B A``. The base passed in is
never modified.

As for full checkpoints, only safetensors load by default: an adapter saved as ``adapter_model.bin`` needs
``allow_pickle=True``. PEFT is an optional dependency (``pip install peft`` or ``vestige[peft]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from probes.errors import ModelLoadError

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


def check_adapter_weights(path: str | Path, allow_pickle: bool = False) -> None:
    """The adapter's weights are there, and are safetensors unless ``allow_pickle``."""
    path = Path(path).expanduser()
    if (path / ADAPTER_SAFETENSORS).is_file():
        return
    if (path / ADAPTER_PICKLE).is_file():
        if allow_pickle:
            return
        raise ModelLoadError(
            f"the adapter in {str(path)!r} is a pickle file ({ADAPTER_PICKLE})",
            "only safetensors load by default: unpickling can run arbitrary code",
            "re-save it as safetensors (peft's save_pretrained does by default), or pass allow_pickle=True "
            "(--allow-pickle) if you trust the file",
        )
    raise ModelLoadError(
        f"{str(path)!r} has {ADAPTER_CONFIG} but no adapter weights",
        f"neither {ADAPTER_SAFETENSORS} nor {ADAPTER_PICKLE} is there",
        "copy the adapter's weights file next to its config",
    )


def named_base(path: str | Path) -> str | None:
    """The base model the adapter names (``base_model_name_or_path``), or None."""
    named = adapter_config(path).get("base_model_name_or_path")
    return str(named) if named else None


def merge_adapter(hf: torch.nn.Module, path: str | Path, base_name: str) -> torch.nn.Module:
    """``hf`` (modified: pass a copy) with the adapter at ``path`` applied by PEFT and merged into its
    weights; the result is the plain HF module, without PEFT layers."""
    path = Path(path).expanduser()
    adapter_config(path)  # a clear error for a broken config before PEFT reads it
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ModelLoadError(
            f"{str(path)!r} is a PEFT adapter, and peft is not installed",
            "merging an adapter into its base needs the peft package",
            "pip install peft   (or pip install 'vestige[peft]')",
        ) from e
    named = named_base(path)
    try:
        peft_model = PeftModel.from_pretrained(hf, str(path), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelLoadError(
            f"the adapter in {str(path)!r} does not fit the base model {base_name!r}",
            f"{type(e).__name__}: {str(e).splitlines()[0]}"
            + (f" (the adapter was trained on {named!r})" if named else ""),
            "pass the base model the adapter was trained on (--base)",
        ) from e
    return peft_model.merge_and_unload().eval()
