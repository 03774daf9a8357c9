"""Peak memory of a block of work: host RSS on CPU, the CUDA caching allocator's peak on GPU.

``with peak_memory(device) as peak: ...`` then ``peak.bytes`` (the highest value seen inside the block) and
``peak.kind``:

- ``"rss"`` (CPU): the process's peak resident set size during the block, in bytes. On Linux the kernel
  keeps the peak as ``VmHWM`` in ``/proc/self/status`` and resets it to the current RSS when ``"5"`` is
  written to ``/proc/self/clear_refs`` (``peak.method == "vmhwm"``): exact, every page the block touched
  counts, however briefly. Where that file cannot be written (another OS, a sandbox that forbids it), a
  thread samples the RSS every ``SAMPLE_SECONDS`` (``/proc/self/statm``, else psutil; ``method ==
  "sampled"``), which can miss a spike shorter than that. ``resource.getrusage``'s ``ru_maxrss`` is not
  used: it is the peak of the whole process lifetime and cannot be reset, so it cannot say what one
  stage needed. RSS counts everything the process holds (Python, torch's own libraries, both models), so
  a stage's peak includes the models that are resident during it.
- ``"cuda_allocated"`` (CUDA): ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  summed over the visible CUDA devices (a model split by a device map lives on several): the bytes of
  live tensors, without the allocator's cached free blocks or the CUDA context.

Blocks may nest: before a reset the inner block folds the peak so far into every enclosing block, so an
outer block still sees the inner block's peak. Not thread-safe across concurrent blocks in two threads.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from probes.results import Result

SAMPLE_SECONDS = 0.005
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_ACTIVE: list[PeakMemory] = []
_LOCK = threading.Lock()


@dataclass
class PeakMemory(Result):
    """The peak of one block (not frozen: the block fills it in as it runs and ends): ``bytes`` (the
    highest seen so far; final when the block ends), ``kind`` (``rss`` or ``cuda_allocated``), ``method``
    (``vmhwm``, ``sampled`` or ``cuda``), ``start_bytes`` (the same measure when the block began: RSS, or
    CUDA memory allocated) and ``seconds`` (the block's wall time)."""

    kind: str
    method: str
    start_bytes: int
    bytes: int = 0
    seconds: float = 0.0
    _devices: tuple[int, ...] = field(default=(), repr=False)

    @property
    def megabytes(self) -> float:
        return self.bytes / 2**20

    def _fold(self, value: int) -> None:
        self.bytes = max(self.bytes, int(value))


def rss_bytes() -> int:
    """The process's resident set size now, in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or refused: say nothing rather than fail the work
        return 0


def _vmhwm() -> int | None:
    try:
        with open(_STATUS) as f:
            m = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _reset_vmhwm() -> bool:
    """Fold the current peak into the open blocks, then reset the kernel's peak RSS to the current RSS;
    False where this is not possible (then RSS is sampled)."""
    before = _vmhwm()
    if before is None:
        return False
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    for outer in _ACTIVE:
        if outer.method == "vmhwm":
            outer._fold(before)
    return True


def _cuda_devices(device: torch.device) -> tuple[int, ...]:
    if device.index is not None:
        return (device.index,)
    return tuple(range(torch.cuda.device_count()))


@contextmanager
def peak_memory(device: str | torch.device | None = None) -> Iterator[PeakMemory]:
    """Measure the peak memory of the ``with`` block on ``device`` (a CUDA device: the CUDA allocator's
    peak summed over the visible GPUs, or one GPU for ``cuda:N``; anything else: host RSS). See the
    module docstring for what each kind counts."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    t0 = time.perf_counter()
    if dev.type == "cuda" and torch.cuda.is_available():
        devices = _cuda_devices(dev)
        with _LOCK:
            for outer in _ACTIVE:
                if outer.kind == "cuda_allocated":
                    outer._fold(sum(torch.cuda.max_memory_allocated(i) for i in outer._devices))
            for i in devices:
                torch.cuda.reset_peak_memory_stats(i)
            start = sum(torch.cuda.memory_allocated(i) for i in devices)
            peak = PeakMemory("cuda_allocated", "cuda", start, start, _devices=devices)
            _ACTIVE.append(peak)
        try:
            yield peak
        finally:
            with _LOCK:
                peak._fold(sum(torch.cuda.max_memory_allocated(i) for i in devices))
                peak.seconds = time.perf_counter() - t0
                _ACTIVE.remove(peak)
        return
    with _LOCK:
        exact = _reset_vmhwm()
        start = rss_bytes()
        peak = PeakMemory("rss", "vmhwm" if exact else "sampled", start, start)
        _ACTIVE.append(peak)
    stop = threading.Event()
    sampler = None
    if not exact:

        def sample() -> None:
            while not stop.wait(SAMPLE_SECONDS):
                peak._fold(rss_bytes())

        sampler = threading.Thread(target=sample, name="vestige-rss-sampler", daemon=True)
        sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
        with _LOCK:
            peak._fold(rss_bytes())
            if exact:
                peak._fold(_vmhwm() or 0)
            peak.seconds = time.perf_counter() - t0
            _ACTIVE.remove(peak)


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters, each tensor once (tied weights count once), at their dtype;
    parameters offloaded to the meta device count at their size too."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def release_free_memory() -> bool:
    """Hand the memory that nothing uses back to the operating system: ``gc.collect()``, then glibc's
    ``malloc_trim(0)`` where the C library is glibc. Tensors under glibc's mmap
    threshold (up to 32 MB once larger blocks have been freed) are carved from the heap, whose freed pages
    otherwise stay resident, so a long run's RSS climbs with every stage that once needed them. The audit
    calls this between stages. Returns whether a trim ran."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


# the activations one pass with gradients holds stay within this fraction of one model's parameter bytes:
# fine-tuning's micro-batches (``analyses.finetune``) and attribution patching's batches
# (``probes.memory_heads``) are cut to it
ACTIVATION_FRACTION = 0.1


def training_activation_bytes(
    shape: Any, b: int, s: int, B: int, *, checkpointed: bool = False, logits: bool = True
) -> int:
    """What autograd keeps for ``b`` sequences of ``s`` tokens at ``B`` bytes per number: ``b s [L ((12 d
    + 4 f) B + a s (4 + B)) + V (B + 8)]`` (per token and layer the norm inputs, projections, rotary q/k,
    grouped-query attention's repeated k/v, the MLP's gate, up and product; the attention probabilities;
    the logits with their float32 log-softmax and gradient; ``analyses.plan`` explains and calibrates
    it). With activation checkpointing (``analyses.training.activation_checkpointing``) each block keeps
    only its input and one block's intermediates exist at a time: ``b s [L d B + (12 d + 4 f) B + a s (4 +
    B) + V (B + 8)]``. ``logits=False``: a pass that unembeds only its last position (``logits_to_keep=1``),
    without the ``V (B + 8)`` per token. ``shape`` has ``n_layers``, ``d_model``, ``d_mlp``, ``n_heads``
    and ``d_vocab`` (a ``probes.model.ModelConfig`` or a planned config's shape)."""
    per_layer = (12 * shape.d_model + 4 * shape.d_mlp) * B + shape.n_heads * s * (4 + B)
    layers = shape.n_layers * shape.d_model * B + per_layer if checkpointed else shape.n_layers * per_layer
    return b * s * (layers + (shape.d_vocab * (B + 8) if logits else 0))


def grad_pass_tokens(model: Any, seq_len: int = 32, fraction: float = ACTIVATION_FRACTION) -> int:
    """The tokens (padding included) one forward pass may hold when it keeps gradients through every layer
    and unembeds only its last position (attribution patching): the most whose saved activations
    (``training_activation_bytes(..., logits=False)`` for sequences of ``seq_len`` tokens) stay within
    ``fraction`` of ``model``'s parameter bytes; at least 1. SmolLM2-135M in float32: 32 tokens at 1.6 MB
    each (measured: autograd saves 0.9 MB a token, the RSS grows 1.3-1.4 MB), against 538 MB of weights."""
    B = torch.finfo(model.dtype).bits // 8
    per_token = training_activation_bytes(model.cfg, 1, seq_len, B, logits=False) / seq_len
    return max(1, int(fraction * parameter_bytes(model.hf) / per_token))


def host_memory() -> tuple[int, int, str]:
    """The host's (total bytes, available bytes, where the numbers come from): ``MemAvailable`` of
    /proc/meminfo, else psutil, else the physical memory (nothing says what is free)."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            text = fh.read()
        kb = {k: int(v) for k, v in re.findall(r"^(\w+):\s+(\d+) kB", text, re.MULTILINE)}
        return kb["MemTotal"] * 1024, kb["MemAvailable"] * 1024, "/proc/meminfo MemAvailable"
    except (OSError, KeyError):
        pass
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available), "psutil.virtual_memory"
    except ImportError:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return total, total, "physical memory (nothing says what is free)"
