"""``vestige info MODEL``: the architecture, the load time and a greedy completion."""

from __future__ import annotations

import argparse
import json
import time

from analyses.cli import common


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="architecture summary and a greedy completion")
    common.add_model_args(p, positional=True)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=common.positive_int, default=12)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model = common.load(args.model, args)
    load_s = time.perf_counter() - t0
    completion = model.generate([args.prompt], max_new_tokens=args.max_new_tokens)[0]
    info = {
        "model": args.model,
        **model.cfg.to_dict(),
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "load_seconds": round(load_s, 3),
        "prompt": args.prompt,
        "completion": completion,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v if k != 'completion' else repr(v)}")
    return 0
