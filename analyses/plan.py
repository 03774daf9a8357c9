"""``plan(spec)``: how much memory each audit stage will need for a model, and whether that fits the
devices, from the checkpoint's config alone (the model is built on the meta device: no weight is read).

The estimate per stage is resident weights + training state + activation working memory, at the chosen
dtype (``B`` bytes per number: 4 for float32, 2 for bfloat16 / float16), with ``P`` the exact parameter
count (tied embeddings once), ``L`` layers, ``d`` = d_model, ``f`` = d_mlp, ``a`` query heads, ``V`` the
vocabulary:

- resident: the base and the unlearned model, ``2 P B``, in every stage.
- fine-tuning in place (relearning and fact relearning; ``analyses.finetune.finetuned``): the audited
  model trains itself and is put back bit for bit afterwards from a ``probes.stash.Stash`` (host memory
  for a GPU model, a temporary file for a CPU one), so no copy of it is on the device. ``params="all"``,
  the default: the gradients ``P B`` and AdamW's two moment buffers ``2 P B``, ``3 P B`` in all. A
  half-precision model trains through float32 master weights (``analyses.training``): its gradients
  ``P B``, the masters, their gradients and AdamW's moments in float32 ``16 P``. The lean choices
  (``lora``, ``norms``, ``biases``, ``layer:K``) need the same for the chosen numbers only (``lora``'s
  numbers are new, so they count themselves too).
- quantization: nothing beside the models (the originals of the rounded block weights wait in host
  memory for a GPU model, in a temporary file for a CPU one: ``probes.stash``).
- interventions: nothing beside the models (the trace search zeroes the base's own rows and puts them
  back).
- inference activations for a batch of ``b`` sequences of ``s`` tokens: ``B b s d (L + 1)`` (the
  residual stream of every layer, cached by the lens, the probes and the concept-vector scans) + ``20 b s
  V`` (five float32 vocabulary-sized tensors: the logits, the scorer's float32 copy and log-softmax, and
  what the bridge's forward holds besides, as measured by scripts/plan_calibration.py) + ``12 b a s^2``
  (one layer's attention scores, mask and pattern in float32).
- training activations for ``b`` sequences of ``s`` tokens: ``b s [L ((12 d + 4 f) B + a s (4 + B)) +
  V (B + 8)]``: what autograd keeps per token and layer (norm inputs, projections, rotary q/k, the
  repeated k/v of grouped-query attention, the MLP's gate, up and product), the attention probabilities
  (float32 softmax and its cast) and the logits with their float32 log-softmax and gradient. The
  training attacks (relearning, fact relearning, the soft prompt) run with activation checkpointing
  (``analyses.training.activation_checkpointing``): each block keeps only its input, ``L d B`` per
  token, and one block's intermediates exist at a time, ``checkpointed(b, s) = b s [L d B + (12 d + 4 f)
  B + a s (4 + B) + V (B + 8)]``. The fine-tuning attacks run a step as micro-batches
  (``analyses.finetune.micro_batch_tokens``) whose activations stay within a tenth of ``P B`` (at least
  one sequence): ``min(checkpointed(b, s), max(P B / 10, checkpointed(1, s)))``. Unlearning trains
  without checkpointing: ``training(16, 64)``.

Every device also carries a fixed ``OVERHEAD`` (Python, torch and the tokenizer on CPU; the CUDA context
and cuBLAS workspaces on a GPU). Checked against measured peaks on SmolLM2-135M in float32 on CPU
(``scripts/plan_calibration.py``; docs/models.md, "Planning and memory"). A stage fits when, on every device it uses, its share of the stage's memory plus
the overhead is at most that device's free memory. A split over several devices is counted in proportion
to the weights each holds (a strategy such as ``balanced`` spreads them in proportion to free memory).
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from probes.data import DATA_DIR
from probes.errors import ModelLoadError, VestigeError
from probes.memory import ACTIVATION_FRACTION, host_memory, training_activation_bytes
from probes.results import Result

GiB = 2**30
OVERHEAD = {"cpu": 1 * GiB, "cuda": 1 * GiB}
DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
}
MODELS_DIR = DATA_DIR / "models"
# what the audit runs with by default (AuditConfig.batch_size; the in-context attack puts 1,200 characters,
# about 300 tokens, before a question), and what its fine-tuning stages use (relearning: windows of 64
# tokens, 8 at a time; fact relearning: 4 facts; the soft prompt: 8; unlearning: 8 forget + 8 retain)
BATCH_SIZE = 16
SEQ_LEN = 512
TRAIN_SEQ = 64
LORA_RANK = 8  # analyses.finetune's default


def bundled_models() -> list[str]:
    """The configs shipped in ``data/models`` (published config.json files), by name."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def canonical_dtype(dtype: str | torch.dtype | None) -> str:
    """``float32`` / ``bfloat16`` / ``float16`` from any of their names (``fp32``, ``bf16``, ``torch.float16``)."""
    if dtype is None:
        return "float32"
    name = str(dtype).replace("torch.", "").lower()
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise VestigeError(
            f"dtype {dtype!r} is not one vestige loads models in",
            f"the dtypes are {', '.join(DTYPES)} (also written fp32, bf16, fp16)",
            "pass one of them",
        )
    return name


@dataclass(frozen=True)
class Device(Result):
    """A device memory can be planned on: ``free_bytes`` is what the plan may use (CUDA: free memory now;
    CPU: MemAvailable), ``total_bytes`` its size; ``source`` says where the numbers come from."""

    name: str
    total_bytes: int
    free_bytes: int
    source: str

    @property
    def kind(self) -> str:
        return "cpu" if self.name == "cpu" else "cuda"


@dataclass(frozen=True)
class StagePlan(Result):
    """One stage: the bytes of weights (resident and copies), training state (gradients and AdamW
    moments), activations, their total, the most any one device needs (its share plus the overhead),
    and whether it fits; ``formula``: the terms, in the notation of the module docstring."""

    stage: str
    weights_bytes: int
    training_bytes: int
    activation_bytes: int
    total_bytes: int
    device_bytes: dict[str, int]
    fits: bool
    formula: str


@dataclass(frozen=True)
class Plan(Result):
    """The memory plan of one model at one dtype on some devices (``plan``)."""

    model: str
    model_type: str
    supported: bool  # an architecture vestige serves (probes.model); others are refused at load time
    dtype: str
    n_params: int
    parameter_bytes: int
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    batch_size: int
    seq_len: int
    device_map: str | dict[str, Any] | None
    devices: tuple[Device, ...]
    shares: dict[str, float]  # the part of the weights each device holds
    stages: tuple[StagePlan, ...]
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether every stage of the audit fits (the ``unlearn`` row is reported, not counted)."""
        return all(s.fits for s in self.stages if s.stage != "unlearn")

    @property
    def peak(self) -> StagePlan:
        """The audit stage that needs the most memory."""
        return max((s for s in self.stages if s.stage != "unlearn"), key=lambda s: s.total_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["fits"] = self.fits
        d["peak_stage"] = self.peak.stage
        return d

    def to_frame(self) -> pd.DataFrame:
        """One row per stage, in GiB."""
        rows = []
        for s in self.stages:
            rows.append(
                {
                    "stage": s.stage,
                    "weights_gib": s.weights_bytes / GiB,
                    "training_gib": s.training_bytes / GiB,
                    "activations_gib": s.activation_bytes / GiB,
                    "total_gib": s.total_bytes / GiB,
                    "largest_device_gib": max(s.device_bytes.values(), default=0) / GiB,
                    "fits": s.fits,
                }
            )
        return pd.DataFrame(rows)

    def text(self) -> str:
        """The plan as the command line prints it."""
        used = [d for d in self.devices if d.name in self.shares]
        if (
            len(used) > 2
            and len({(d.free_bytes, d.total_bytes, round(self.shares[d.name], 6)) for d in used}) == 1
        ):
            d = used[0]
            devs = (
                f"{len(used)} devices ({used[0].name} .. {used[-1].name}), {d.free_bytes / GiB:.1f} GiB free "
                f"of {d.total_bytes / GiB:.1f} each, {self.shares[d.name]:.1%} of the weights each"
            )
        else:
            devs = ", ".join(
                f"{d.name} {d.free_bytes / GiB:.1f} GiB free of {d.total_bytes / GiB:.1f}"
                + (f" ({self.shares[d.name]:.0%} of the weights)" if len(used) > 1 else "")
                for d in used
            )
        lines = [
            f"model       {self.model} ({self.model_type}{'' if self.supported else ', not served by vestige'})",
            f"parameters  {self.n_params:,} = {self.parameter_bytes / GiB:.2f} GiB in {self.dtype}",
            f"shape       {self.n_layers} layers, d_model {self.d_model}, d_mlp {self.d_mlp}, heads "
            f"{self.n_heads}/{self.n_kv_heads}, vocabulary {self.d_vocab:,}",
            f"batch       {self.batch_size} x {self.seq_len} tokens (inference), x {TRAIN_SEQ} (fine-tuning)",
            f"placement   {_placement(self.device_map)} on {devs}",
            "",
        ]
        frame = self.to_frame()
        width = max(len(s) for s in frame["stage"])
        lines.append(
            f"{'stage':<{width}}  {'weights':>8}  {'training':>8}  {'activ.':>8}  {'total':>8}  "
            f"{'per dev.':>8}  fits"
        )
        for _, r in frame.iterrows():
            lines.append(
                f"{r['stage']:<{width}}  {r['weights_gib']:>8.2f}  {r['training_gib']:>8.2f}  "
                f"{r['activations_gib']:>8.2f}  {r['total_gib']:>8.2f}  {r['largest_device_gib']:>8.2f}  "
                f"{'yes' if r['fits'] else 'NO'}"
            )
        lines.append("(GiB; 'per dev.': the most one device needs, its share plus the runtime overhead)")
        lines.append("")
        lines.append(
            f"audit fits: {'yes' if self.fits else 'no'} (largest stage: {self.peak.stage}, "
            f"{self.peak.total_bytes / GiB:.2f} GiB)"
        )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = html.escape(
            f"{self.model}: {self.n_params:,} parameters, {self.dtype}, audit fits: {'yes' if self.fits else 'no'}"
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<h4>Plan</h4><p>{head}</p>"
            + self.to_frame().to_html(escape=True, float_format=lambda x: f"{x:.2f}")
            + (f"<ul>{notes}</ul>" if notes else "")
        )


def _placement(device_map: str | dict | None) -> str:
    if device_map is None:
        return "one device"
    if isinstance(device_map, str):
        return f"device map {device_map!r}"
    return f"device map of {len(device_map)} entries"


# ---- reading the config ------------------------------------------------------------------------------
def read_config(spec: str | os.PathLike | dict, *, trust_remote_code: bool = False) -> tuple[str, Any]:
    """``(name, transformers config)`` of ``spec`` without reading a weight: a bundled name
    (``bundled_models()``: ``llama-3-8b``, ``llama-2-70b``), vestige's own specs (``smollm2-135m`` from its
    GGUF's metadata, ``gpt2`` / ``gpt2-seeded``: transformers' default GPT2Config), a config dict, a JSON
    config file, a model directory (its config.json), a ``.gguf`` file, or a hub id in the local
    HuggingFace cache (or on the hub when it is reachable)."""
    from transformers import AutoConfig, GPT2Config

    from probes.model import (
        GPT2_SPECS,
        SEEDED_GPT2_SPECS,
        SMOLLM2_SPECS,
        _looks_like_path,
        config_cache_first,
        hub_offline,
    )

    if isinstance(spec, dict):
        return str(spec.get("_name_or_path", "config")), _config_from_dict(spec, "the config given")
    text = str(spec)
    key = text.lower()
    path = Path(text).expanduser()
    if (MODELS_DIR / f"{key}.json").is_file():
        return key, _config_from_file(MODELS_DIR / f"{key}.json")
    if key in SMOLLM2_SPECS:
        return key, _smollm2_config()
    if key in SEEDED_GPT2_SPECS or key in GPT2_SPECS:
        return key, GPT2Config()  # the gpt2-small shape: what both load (vestige's seeded one and the hub's)
    if path.is_file() and path.suffix == ".gguf":
        return text, AutoConfig.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    if path.is_file():
        return text, _config_from_file(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{text!r} holds no config.json",
                "vestige plan reads a checkpoint's config.json (a PEFT adapter directory has none: plan its base)",
                "point to the model directory, to a config .json file, or to a bundled config: "
                + ", ".join(bundled_models()),
            )
        return text, _config_from_file(path / "config.json")
    if _looks_like_path(text):
        raise ModelLoadError(
            f"model path {text!r} does not exist",
            "the spec looks like a file system path but nothing is there",
            "check the path, or plan a bundled config: " + ", ".join(bundled_models()),
        )
    if text.count("/") == 1:
        offline = hub_offline()
        try:  # the local cache first; the hub only where it lacks the config and the user is online
            return text, config_cache_first(text, trust_remote_code=trust_remote_code, hub=not offline)[0]
        except (OSError, ValueError) as e:
            raise ModelLoadError(
                f"no config for {text!r}: it is not in the local HuggingFace cache"
                + ("" if offline else " and the hub did not give it"),
                f"{type(e).__name__}: {str(e).splitlines()[0]}",
                "download its config.json and pass the file, or plan a bundled config: "
                + ", ".join(bundled_models()),
            ) from e
    raise ModelLoadError(
        f"unknown model spec {text!r}",
        "it is neither a bundled config, a built-in name, a config file, a model directory, a .gguf file "
        "nor a hub id (org/name)",
        f"plan one of {', '.join(bundled_models())}, smollm2-135m, gpt2, a config.json path or a model "
        "directory",
    )


def _config_from_file(path: Path) -> Any:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(
            f"{str(path)!r} is not a JSON config",
            str(e).splitlines()[0],
            "pass a HuggingFace config.json (a JSON object with model_type, hidden_size, ...)",
        ) from e
    return _config_from_dict(data, repr(str(path)))


def _config_from_dict(data: Any, where: str) -> Any:
    from transformers import AutoConfig

    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelLoadError(
            f"{where} is not a HuggingFace model config",
            "a config.json is a JSON object whose model_type names the architecture (llama, gpt2, ...)",
            "pass the checkpoint's config.json",
        )
    fields = {k: v for k, v in data.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(data["model_type"], **fields)
    except (ValueError, KeyError) as e:
        raise ModelLoadError(
            f"{where}: transformers does not know model_type {data['model_type']!r}",
            str(e).splitlines()[0],
            "check model_type, or update transformers if the architecture is newer than it",
        ) from e


def _smollm2_config() -> Any:
    """The embedded SmolLM2's config: the dequantized copy's config.json when it exists (what load_model
    reads), else the GGUF's metadata."""
    from transformers import AutoConfig

    from probes.model import _file_hash, cache_dir, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    cached = cache_dir() / "gguf" / f"{gguf.stem}-{_file_hash(gguf)}" / "config.json"
    if cached.is_file():
        return AutoConfig.from_pretrained(cached.parent, local_files_only=True)
    return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


# ---- counting on the meta device ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    n_params: int
    n_block_params: int
    module_params: dict[str, int]  # parameter name -> numel (tied parameters once)
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_vocab: int
    n_lora_params: int = 0  # a rank-8 update of every block linear weight: 8 (in + out) each


def count_parameters(config: Any, *, trust_remote_code: bool = False) -> int:
    """The exact parameter count of ``config``'s causal LM (tied embeddings once), built on the meta
    device."""
    return _shape(config, trust_remote_code=trust_remote_code).n_params


def _shape(config: Any, *, trust_remote_code: bool = False) -> _Shape:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            hf = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as e:
        raise ModelLoadError(
            f"transformers has no causal LM for model_type {getattr(config, 'model_type', '?')!r}",
            str(e).splitlines()[0],
            "plan a causal language model's config",
        ) from e
    # init_empty_weights skips the tying from_config does on real tensors: tie so that a tied
    # unembedding counts once, as in the loaded model
    hf.tie_weights()
    module_params = {n: p.numel() for n, p in hf.named_parameters()}
    layers = max(
        (m for m in hf.modules() if isinstance(m, torch.nn.ModuleList)), key=lambda m: len(m), default=None
    )
    block_ids = {id(p) for p in layers.parameters()} if layers is not None else set()
    from transformers.pytorch_utils import Conv1D

    n_lora = 0
    for m in layers.modules() if layers is not None else ():
        if isinstance(m, torch.nn.Linear):
            n_lora += LORA_RANK * (m.in_features + m.out_features)
        elif isinstance(m, Conv1D):
            n_lora += LORA_RANK * sum(m.weight.shape)
    c = hf.config
    d_model = getattr(c, "hidden_size", None) or c.n_embd
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    return _Shape(
        n_params=sum(module_params.values()),
        n_block_params=sum(p.numel() for p in hf.parameters() if id(p) in block_ids),
        module_params=module_params,
        n_layers=getattr(c, "num_hidden_layers", None) or c.n_layer,
        d_model=d_model,
        d_mlp=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d_model,
        n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
        d_vocab=hf.get_output_embeddings().weight.shape[0],
        n_lora_params=n_lora,
    )


# ---- devices -----------------------------------------------------------------------------------------
def visible_devices() -> tuple[Device, ...]:
    """Every CUDA device (free memory now, from ``torch.cuda.mem_get_info``) and the host (``MemAvailable``
    of /proc/meminfo, else psutil, else the physical memory)."""
    out = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append(Device(f"cuda:{i}", int(total), int(free), "torch.cuda.mem_get_info"))
    out.append(_host())
    return tuple(out)


def _host() -> Device:
    return Device("cpu", *host_memory())


def gpus(spec: str) -> tuple[Device, ...]:
    """Hypothetical GPUs to plan on: ``"80"`` (one of 80 GiB), ``"8x80"``, ``"80,80,40"``."""
    out: list[Device] = []
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(?:(\d+)[xX])?(\d+(?:\.\d+)?)(?:GiB|GB|G)?", part)
        if not m or float(m.group(2)) <= 0 or (m.group(1) is not None and int(m.group(1)) < 1):
            raise VestigeError(
                f"--gpus {spec!r}: {part!r} is not a GPU size",
                "each entry is a memory size in GiB, optionally N x size for N equal GPUs",
                "pass e.g. --gpus 80, --gpus 8x80 or --gpus 80,80,40",
            )
        for _ in range(int(m.group(1) or 1)):
            size = int(float(m.group(2)) * GiB)
            out.append(Device(f"cuda:{len(out)}", size, size, "given"))
    return tuple(out)


def _shares(
    device_map: str | dict | None,
    device: str | None,
    devices: Sequence[Device],
    shape: _Shape,
) -> tuple[dict[str, float], float, list[str]]:
    """The part of the weights on each device, the offloaded part (disk, or cpu beside GPUs: the audit
    refuses offloaded weights) and notes."""
    by_name = {d.name: d for d in devices}
    cuda = [d for d in devices if d.kind == "cuda"]
    notes: list[str] = []
    if device_map is None:
        if device is not None:
            try:
                name = str(torch.device(device))
            except (RuntimeError, ValueError) as e:
                raise VestigeError(
                    f"--device {device!r} is not a device",
                    "torch names a device by its type (cpu, cuda, ...) and an optional :index",
                    "use cpu, cuda, cuda:0, ... or leave --device out",
                ) from e
            name = "cuda:0" if name == "cuda" else name
        else:
            name = cuda[0].name if cuda else "cpu"
        if name not in by_name:
            raise VestigeError(
                f"--device {device!r}: no such device to plan on",
                f"the devices are {', '.join(by_name)}",
                "pick one of them, or pass --gpus to plan on GPUs this machine does not have",
            )
        if len(cuda) > 1:
            notes.append(
                f"without a device map the model goes on one device ({name}); --device-map balanced "
                f"splits it over the {len(cuda)} GPUs"
            )
        return {name: 1.0}, 0.0, notes
    if isinstance(device_map, str):
        pool = cuda or [by_name["cpu"]]
        free = sum(d.free_bytes for d in pool)
        return {d.name: d.free_bytes / free for d in pool}, 0.0, notes
    placed: dict[str, int] = {}
    for pname, n in shape.module_params.items():
        keys = [k for k in device_map if k == "" or pname == k or pname.startswith(k + ".")]
        if not keys:
            raise ModelLoadError(
                f"the device map gives no device for {pname}",
                "every parameter needs a device, from the longest module name of the map that contains it",
                "add its module (or a module above it) to the map, or use auto / balanced",
            )
        value = device_map[max(keys, key=len)]
        target = f"cuda:{value}" if isinstance(value, int) else str(value)
        if target != "disk" and target not in by_name:
            raise VestigeError(
                f"the device map sends {pname} to {target}, which is not among the devices planned on",
                f"the devices are {', '.join(by_name)}",
                "pass --gpus with enough GPUs to plan a map of GPU indices on another machine",
            )
        placed[target] = placed.get(target, 0) + n
    total = sum(placed.values())
    has_gpu = any(k.startswith("cuda") for k in placed)
    offloaded = sum(n for k, n in placed.items() if k == "disk" or (k == "cpu" and has_gpu))
    if offloaded:
        notes.append(
            f"{offloaded / total:.0%} of the weights are offloaded (disk, or cpu beside GPUs): forward passes "
            "work on such a model, but the audit and unlearning refuse it (they read, copy and edit weights)"
        )
    shares = {k: n / total for k, n in placed.items() if k != "disk" and not (k == "cpu" and has_gpu)}
    return shares, offloaded / total, notes


# ---- the plan ----------------------------------------------------------------------------------------
def _inference(sh: _Shape, b: int, s: int, B: int) -> int:
    return B * b * s * sh.d_model * (sh.n_layers + 1) + 20 * b * s * sh.d_vocab + 12 * b * sh.n_heads * s * s


_training = training_activation_bytes  # probes.memory: the module docstring's training(b, s)


def _lean_parameters(sh: _Shape, params: str) -> int:
    """How many numbers the lean relearning variant ``params`` trains."""
    if params == "lora":
        return sh.n_lora_params
    if params.startswith("layer:"):
        return sh.n_block_params // sh.n_layers
    if params == "norms":
        return sum(n for name, n in sh.module_params.items() if "norm" in name or ".ln_" in name)
    return sum(n for name, n in sh.module_params.items() if name.endswith(".bias"))


def _micro_batched(sh: _Shape, b: int, s: int, B: int) -> int:
    """``finetune.finetuned``'s activations: its step's batch, checkpointed, in micro-batches of at most
    ``ACTIVATION_FRACTION`` of the weights, at least one sequence."""
    whole = _training(sh, b, s, B, checkpointed=True)
    one = _training(sh, 1, s, B, checkpointed=True)
    return min(whole, max(int(ACTIVATION_FRACTION * sh.n_params * B), one))


def plan(
    spec: str | os.PathLike | dict,
    dtype: str | torch.dtype | None = "float32",
    *,
    devices: Sequence[Device] | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    batch_size: int = BATCH_SIZE,
    seq_len: int = SEQ_LEN,
    trust_remote_code: bool = False,
    relearn_params: str = "all",
) -> Plan:
    """Plan an audit of ``spec`` (``read_config``) in ``dtype``: per stage, the bytes it needs
    (module docstring) and whether it fits ``devices`` (default: ``visible_devices()``) placed on
    ``device`` (default: the first GPU, else the CPU) or by ``device_map`` (a strategy: spread over the
    GPUs; a dict: the devices it names, shares from the parameters each module holds). ``relearn_params``:
    what relearning and fact relearning train (``analyses.finetune.PARAMS``; ``all``, the audit's default,
    trains every weight; each trains the audited model in place, with state for its parameters
    only)."""
    from analyses.finetune import is_variant
    from probes.model import _FAMILY_OF, resolve_device_map

    if not is_variant(relearn_params):
        raise VestigeError(
            f"unknown relearning variant {relearn_params!r}",
            "relearning trains all, norms, biases, lora or layer:K",
            "pass one of them",
        )

    if batch_size < 1 or seq_len < 1:
        raise VestigeError(
            f"batch size {batch_size} and sequence length {seq_len} must be at least 1",
            "they size the activations of one batch",
            "pass positive numbers",
        )
    name, config = read_config(spec, trust_remote_code=trust_remote_code)
    dtype = canonical_dtype(dtype)
    B = DTYPES[dtype]
    sh = _shape(config, trust_remote_code=trust_remote_code)
    devices = tuple(devices) if devices is not None else visible_devices()
    if not any(d.name == "cpu" for d in devices):
        devices = devices + (_host(),)
    # the map is checked as load_model checks it, except that its GPUs may be ones this machine lacks
    device_map = resolve_device_map(device_map, check_devices=False)
    shares, offloaded, notes = _shares(device_map, device, devices, sh)
    P, b, s = sh.n_params, batch_size, seq_len
    W = P * B
    inf = _inference(sh, b, s, B)
    # full fine-tuning's state: the gradients and AdamW's two moments; a half-precision model trains
    # through float32 masters (analyses.training), which with their gradients and moments are 16 P
    state, state_formula = (
        (3 * W, "grads PB + AdamW 2PB")
        if B == 4
        else (W + 16 * P, "grads PB + fp32 masters, grads, AdamW 16P")
    )
    # in place (the trained weights' originals wait off the device): the state of what trains
    relearn_state, relearn_formula = state, f"{state_formula} (in place)"
    if relearn_params != "all":  # lean: state for the n trained numbers only
        n = _lean_parameters(sh, relearn_params)
        # grads and AdamW (through float32 masters in half precision); LoRA's numbers are new: themselves too
        per = (3 * B if B == 4 else B + 16) + (B if relearn_params == "lora" else 0)
        relearn_state = n * per
        relearn_formula = f"{relearn_params}: {n:,} numbers x {per} bytes (in place)"
    relearn_weights = 2 * W
    rows = [
        ("behaviour", 2 * W, 0, inf, "2PB + inference(b, s)"),
        (
            "relearn",
            relearn_weights,
            relearn_state,
            _micro_batched(sh, 8, TRAIN_SEQ, B),
            f"2PB + {relearn_formula} + micro-batched checkpointed training(8, 64)",
        ),
        (
            "fact_relearn",
            relearn_weights,
            relearn_state,
            _micro_batched(sh, 4, TRAIN_SEQ, B),
            f"2PB + {relearn_formula} + micro-batched checkpointed training(4, 64)",
        ),
        (
            "soft_prompt",
            2 * W,
            0,
            _training(sh, 8, TRAIN_SEQ, B, checkpointed=True),
            "2PB + checkpointed training(8, 64) (gradient to the inputs only)",
        ),
        (
            "quantization",
            2 * W,
            0,
            inf,
            "2PB + inference(b, s) (the originals off the device)",
        ),
        ("concept_vectors", 2 * W, 0, inf, "2PB + inference(b, s)"),
        ("logit_lens", 2 * W, 0, inf, "2PB + inference(b, s)"),
        (
            "heads",
            2 * W,
            0,
            max(inf, int(ACTIVATION_FRACTION * W)),
            "2PB + max(inference(b, s), attribution patching's gradient pass: at most 0.1 PB)",
        ),
        ("probes", 2 * W, 0, inf, "2PB + inference(b, s)"),
        ("ches", 2 * W, 0, inf, "2PB + inference(b, s)"),
        ("interventions", 2 * W, 0, inf, "2PB + inference(b, s) (the search edits the base in place)"),
        ("traces", 2 * W, 0, inf, "2PB + inference(b, s)"),
        (
            "unlearn",
            2 * W,
            state,
            _training(sh, 16, TRAIN_SEQ, B),
            f"base PB + copy PB + {state_formula} + training(16, 64)",
        ),
    ]
    by_name = {d.name: d for d in devices}
    stages = []
    for stage, weights, training, act, formula in rows:
        total = weights + training + act
        need = {dev: int(share * total) + OVERHEAD[by_name[dev].kind] for dev, share in shares.items()}
        fits = offloaded == 0 and all(need[dev] <= by_name[dev].free_bytes for dev in need)
        stages.append(StagePlan(stage, weights, training, act, total, need, fits, formula))
    if getattr(config, "model_type", "") not in _FAMILY_OF:
        notes.append(
            f"vestige does not serve model_type {config.model_type!r}: load_model refuses it (supported: "
            f"{', '.join(sorted(_FAMILY_OF))})"
        )
    if dtype != "float32":
        notes.append(
            f"fine-tuning stages train {dtype} weights through float32 masters (AdamW's moments in float32): "
            "a step of 3e-5 applied to a bfloat16 weight in place rounds away"
        )
    return Plan(
        model=name,
        model_type=str(getattr(config, "model_type", "")),
        supported=getattr(config, "model_type", "") in _FAMILY_OF,
        dtype=dtype,
        n_params=P,
        parameter_bytes=W,
        n_layers=sh.n_layers,
        d_model=sh.d_model,
        d_mlp=sh.d_mlp,
        n_heads=sh.n_heads,
        n_kv_heads=sh.n_kv_heads,
        d_vocab=sh.d_vocab,
        batch_size=b,
        seq_len=s,
        device_map=device_map,
        devices=devices,
        shares=shares,
        stages=tuple(stages),
        notes=tuple(notes),
    )


__all__ = [
    "BATCH_SIZE",
    "SEQ_LEN",
    "Device",
    "Plan",
    "StagePlan",
    "bundled_models",
    "canonical_dtype",
    "count_parameters",
    "gpus",
    "plan",
    "read_config",
    "visible_devices",
]
