"""``vestige demo``: unlearn Harry Potter from the embedded SmolLM2 with GA, NPO and Needle, audit each,
write one report."""

from __future__ import annotations

import argparse
import time


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="unlearn Harry Potter from SmolLM2 (ga, npo, needle), audit each, report")
    from analyses.cli import common

    p.add_argument("--out", default="vestige-out/demo")
    common.add_model_args(p, flag=None)  # --device, --device-map, --dtype, ...: the model is SmolLM2
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.cli import common
    from analyses.demo import run_demo

    common.check_device(args.device)
    common.check_out_dir(args.out)
    t0 = time.perf_counter()
    model = common.load("smollm2-135m", args)
    _, table = run_demo(args.out, model=model, progress=not args.no_progress)
    print(table.to_string(index=False))
    print(f"wrote {args.out}/report.html in {time.perf_counter() - t0:.0f} s")
    return 0
