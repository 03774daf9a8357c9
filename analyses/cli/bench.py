"""``vestige bench``: speed ratios against baselines timed in the same run; writes ``bench.json``."""

from __future__ import annotations

import argparse

from analyses.cli import common


def register(sub) -> argparse.ArgumentParser:
    from analyses.bench.suite import names

    p = sub.add_parser("bench", help="speed ratios against same-run baselines; writes bench.json")
    p.add_argument("--out", default="vestige-out/bench")
    common.add_model_args(p)  # --model, --device, --device-map, --dtype, ...
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=names(),
        metavar="NAME",
        help="benchmarks to run: %(choices)s",
    )
    p.add_argument("--repeats", type=common.positive_int, default=5)
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not a measurement)")
    return p


def run(args: argparse.Namespace) -> int:
    from analyses.bench.harness import BenchContext, table
    from analyses.bench.suite import run_benchmarks

    common.check_device(args.device)
    common.check_out_dir(args.out)
    ctx = BenchContext(args.model, args.device, quick=args.quick, load=lambda: common.load(args.model, args))
    results = run_benchmarks(args.out, args.only, ctx=ctx, repeats=args.repeats)
    print(table(results).to_string(index=False))
    print(f"wrote {args.out}/bench.json")
    return 0
