"""``vestige plan --model M``: the memory each audit stage will need at a dtype and whether it fits the
devices, from the checkpoint's config alone (nothing heavy loads; ``analyses.plan``)."""

from __future__ import annotations

import argparse
import json

from analyses.cli import common


def _dtype(text: str) -> str:
    from analyses.plan import canonical_dtype
    from probes.errors import VestigeError

    try:
        return canonical_dtype(text)
    except VestigeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dtype (fp32, bf16, fp16)") from e


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plan",
        help="memory each audit stage needs for a model (from its config) and whether it fits the devices",
    )
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="a bundled config (llama-3-8b, llama-2-70b), smollm2-135m, gpt2, a config .json, a model "
        "directory, a .gguf or a hub id in the local cache (default: the embedded SmolLM2)",
    )
    p.add_argument("--dtype", type=_dtype, default="float32", help="fp32 (default), bf16 or fp16")
    p.add_argument("--device", default=None, help="the one device to plan on (default: first GPU, else cpu)")
    common.add_device_map_arg(p)
    p.add_argument(
        "--gpus",
        default=None,
        metavar="SIZES",
        help="plan on these GPUs instead of the visible ones: sizes in GiB, e.g. 80, 8x80 or 80,80,40",
    )
    p.add_argument(
        "--batch-size", type=common.positive_int, default=None, help="inference batch (default 16)"
    )
    p.add_argument(
        "--seq-len",
        type=common.positive_int,
        default=None,
        help="tokens per inference sequence (default 512)",
    )
    p.add_argument(
        "--relearn-params",
        default="all",
        help="what relearning and fact relearning train, as vestige audit --relearn-params: all (the "
        "default: a fine-tuned copy), lora, norms, biases or layer:K (in place, state for those only)",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="run a checkpoint's own config code")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.plan import BATCH_SIZE, SEQ_LEN, gpus, plan

    if args.device is not None and args.device_map is not None:
        common.check_placement(args.device, args.device_map)  # refuses the pair with problem / cause / fix
    devices = None
    if args.gpus is not None:
        from analyses.plan import _host

        devices = gpus(args.gpus) + (_host(),)
    result = plan(
        args.model,
        args.dtype,
        devices=devices,
        device=args.device,
        device_map=args.device_map,
        batch_size=args.batch_size or BATCH_SIZE,
        seq_len=args.seq_len or SEQ_LEN,
        trust_remote_code=args.trust_remote_code,
        relearn_params=args.relearn_params,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.text())
    return 0
