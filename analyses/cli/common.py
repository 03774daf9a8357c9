"""What the subcommands share: the model arguments and loading, the concept arguments and loading, and
argument types that reject bad values with a clear message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from probes.data import DEFAULT_CONCEPT_FILE, Concept, load_concept
from probes.errors import ModelLoadError, VestigeError
from probes.model import Model

MODEL_HELP = "model spec: smollm2-135m, gpt2, gpt2-seeded, a directory, a .gguf, a hub id"


def add_model_args(
    p: argparse.ArgumentParser, *, flag: str | None = "--model", positional: bool = False
) -> None:
    """``--model`` (or a positional model), ``--device``, ``--device-map``, ``--offload-folder``,
    ``--dtype``, ``--allow-pickle``, ``--trust-remote-code``; ``flag=None`` adds only the loading options
    (commands with two models)."""
    if positional:
        p.add_argument("model", help=MODEL_HELP)
    elif flag is not None:
        p.add_argument(flag, default="smollm2-135m", help=MODEL_HELP + " (default: the embedded SmolLM2)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    add_device_map_arg(p)
    p.add_argument(
        "--offload-folder",
        default=None,
        help="where a device map's 'disk' entries go (default: a temporary folder, removed afterwards)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16", "float16", "auto"),
        help="default: bfloat16 on a GPU, float32 on the CPU; auto: a checkpoint in the dtype it was saved in "
        "(bf16 / fp16 releases as they are)",
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt weights (loaded weights_only)")
    p.add_argument("--trust-remote-code", action="store_true", help="run a checkpoint's own model code")


def load(spec: str, args: argparse.Namespace, *, base: Model | None = None) -> Model:
    """Load ``spec`` with the model options of ``args`` (``add_model_args``); ``base``: the loaded model a
    PEFT adapter directory ``spec`` is merged into (else the base its adapter_config.json names)."""
    from probes.model import load_model

    device_map = check_placement(args.device, getattr(args, "device_map", None))
    return load_model(
        spec,
        device=args.device,
        dtype=args.dtype,
        device_map=device_map,
        offload_folder=getattr(args, "offload_folder", None),
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        base=base,
    )


def add_device_map_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="split the model over devices with accelerate: auto, balanced, sequential, a JSON object of "
        'module name -> device ({"model.layers.0": 0, ..., "lm_head": "cpu"}; devices: GPU index, cuda:N, '
        "cpu, disk) or the path of a JSON file holding one (docs/models.md)",
    )


def check_placement(device: str | None, device_map: str | None) -> str | dict | None:
    """``--device`` and ``--device-map`` checked before any model loads; the device map resolved."""
    from probes.model import resolve_device_map

    check_device(device)
    if device is not None and device_map is not None:
        raise ModelLoadError(
            f"--device {device!r} and --device-map {device_map!r} both say where the model goes",
            "a device map places every module itself; --device moves the whole model to one device",
            "pass one of them",
        )
    return resolve_device_map(device_map)


def add_concept_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--concept-file",
        default=None,
        help=f"concept JSON (default: the bundled {DEFAULT_CONCEPT_FILE.name})",
    )
    p.add_argument(
        "--concept",
        default=None,
        help="concept name in the file, case-insensitive (needed when the file holds more than one; the "
        "bundled file's first is 'Harry Potter')",
    )


def concept_file(args: argparse.Namespace) -> Path:
    return Path(args.concept_file) if args.concept_file else DEFAULT_CONCEPT_FILE


def load_concept_from_args(args: argparse.Namespace) -> Concept:
    return load_concept(concept_file(args), args.concept)


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from e
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
    return value


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` that torch cannot parse or that this machine does not have, before any model
    loads (torch would fail with an assertion deep inside ``.to``)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"--device {device!r} is not a device",
            "torch names a device by its type (cpu, cuda, mps, xpu, ...) and an optional :index",
            "use cpu, cuda, cuda:0, mps, ... or leave --device out (CUDA when available, else CPU)",
        ) from e
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(
                f"--device {device!r}: CUDA is not available on this machine",
                f"torch {torch.__version__} sees no CUDA GPU"
                + ("" if torch.backends.cuda.is_built() else " (this build has no CUDA support)"),
                "use --device cpu, or leave --device out",
            )
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(
                f"--device {device!r}: there is no such GPU",
                f"this machine has {count} CUDA device(s): cuda:0 .. cuda:{count - 1}",
                "pick one of those, or pass --device cuda",
            )
    elif dev.type == "mps" and not (torch.backends.mps.is_available()):
        raise ModelLoadError(
            f"--device {device!r}: MPS is not available on this machine",
            "MPS needs Apple silicon and a torch build with MPS support",
            "use --device cpu, or leave --device out",
        )


def check_out_dir(out: str | Path | None) -> None:
    """Refuse an ``--out`` folder that cannot be created, before the work whose results it would hold."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise VestigeError(
            f"--out {str(path)!r} is a file, not a folder",
            "the results are written as several files inside the --out folder",
            "pass a folder path (it is created if missing), or move the file away",
        )
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VestigeError(
            f"--out {str(path)!r} cannot be created",
            f"{str(parent)!r} is a file, so no folder can be made below it",
            "pass a folder path whose parents are folders",
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VestigeError(
            f"--out {str(path)!r} cannot be written",
            f"no write permission in {str(parent)!r}",
            "pass a folder you can write to (e.g. one under the current directory)",
        )


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from e
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not in [0, 1]")
    return value


def optional_fraction(text: str) -> float | None:
    """A fraction in [0, 1], or ``none`` / ``off``."""
    return None if text.lower() in ("none", "off") else fraction(text)
