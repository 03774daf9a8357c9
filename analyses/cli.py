"""The ``vestige`` command line. Each subcommand is a pair: ``_add_<name>(subparsers)`` and its runner.

Errors derived from ``VestigeError`` are printed as problem / cause / fix with exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from probes.errors import VestigeError


def _add_model_args(p: argparse.ArgumentParser, flag: str = "--model", positional: bool = False) -> None:
    if positional:
        p.add_argument(
            "model", help="model spec: smollm2-135m, gpt2, gpt2-seeded, a directory, a .gguf, a hub id"
        )
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    p.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt weights (loaded weights_only)")
    p.add_argument("--trust-remote-code", action="store_true", help="run a checkpoint's own model code")


def _load(spec: str, args: argparse.Namespace):
    from probes.model import load_model

    return load_model(
        spec,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )


# ---- info ----------------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="architecture summary and a greedy completion")
    _add_model_args(p, positional=True)
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model = _load(args.model, args)
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


# ---- bench ---------------------------------------------------------------------------------------------
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed ratios against same-run baselines; writes bench.json")
    p.add_argument("--out", default="vestige-out/bench")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--device", default=None)
    p.add_argument("--only", nargs="*", default=None, help="benchmark names to run (default: all)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not a measurement)")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from analyses.bench import BenchContext, run_benchmarks, table

    ctx = BenchContext(args.model, args.device, quick=args.quick)
    results = run_benchmarks(args.out, args.only, ctx=ctx, repeats=args.repeats)
    print(table(results).to_string(index=False))
    print(f"wrote {args.out}/bench.json")
    return 0


# ---- unlearn (logic in analyses/unlearn_cmd.py) --------------------------------------------------------
def _add_unlearn(sub) -> None:
    from analyses.unlearn_cmd import add_unlearn

    add_unlearn(sub, _add_model_args)
    sub.choices["unlearn"].set_defaults(run=_run_unlearn)


def _run_unlearn(args: argparse.Namespace) -> int:
    from analyses.unlearn_cmd import run_unlearn

    return run_unlearn(args, _load)


# ---- audit / demo --------------------------------------------------------------------------------------
def _add_audit(sub) -> None:
    p = sub.add_parser("audit", help="removed or suppressed? audit.json + report.html")
    p.add_argument("--base", required=True, help="model spec of the original model")
    p.add_argument("--unlearned", required=True, help="model spec of the unlearned model")
    p.add_argument("--concept-file", default=None, help="concept JSON (default: the bundled data set)")
    p.add_argument("--concept", default=None, help="concept name in the file")
    p.add_argument("--out", default="vestige-out/audit")
    p.add_argument("--json", action="store_true", help="also print the audit's JSON summary on stdout")
    p.add_argument("--n-vectors", type=int, default=10)
    p.add_argument("--relearn-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)
    p.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from analyses.audit import AuditConfig, audit
    from probes.data import DEFAULT_CONCEPT_FILE, load_concept, validate_concept

    concept = load_concept(args.concept_file or DEFAULT_CONCEPT_FILE, args.concept)
    base, unlearned = _load(args.base, args), _load(args.unlearned, args)
    validate_concept(base, concept)
    cfg = AuditConfig(n_vectors=args.n_vectors, relearn_steps=args.relearn_steps, seed=args.seed)
    result = audit(base, unlearned, concept, config=cfg, out=args.out, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.to_frame().to_string(index=False))
        print(f"verdict: {result.verdict}\nwrote {args.out}/audit.json and {args.out}/report.html")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="unlearn Harry Potter from SmolLM2 (ga, npo, needle), audit each, report")
    p.add_argument("--out", default="vestige-out/demo")
    p.add_argument("--device", default=None)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from analyses.demo import run_demo
    from probes.model import load_model

    t0 = time.perf_counter()
    _, table = run_demo(
        args.out, model=load_model("smollm2-135m", device=args.device), progress=not args.no_progress
    )
    print(table.to_string(index=False))
    print(f"wrote {args.out}/report.html in {time.perf_counter() - t0:.0f} s")
    return 0


def _add_concepts(sub) -> None:
    from analyses.concepts_cmd import add_parser

    add_parser(sub)


# ---- heads (logic in analyses/heads_cmd.py) ------------------------------------------------------------
def _add_heads(sub) -> None:
    from analyses.heads_cmd import add_arguments

    p = sub.add_parser("heads", help="retrieval heads (NIAH) or memory/context heads (knowledge conflicts)")
    _add_model_args(p)
    add_arguments(p)
    p.set_defaults(run=_run_heads)


def _run_heads(args: argparse.Namespace) -> int:
    from analyses.heads_cmd import run

    return run(args, _load(args.model, args))


COMMANDS = [_add_info, _add_bench, _add_unlearn, _add_audit, _add_demo, _add_concepts, _add_heads]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vestige",
        description="Is the unlearned knowledge gone from the weights, or only hidden from the output?",
    )
    parser.add_argument("--no-progress", action="store_true", help="turn progress bars off")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_progress:
        import os

        os.environ["TQDM_DISABLE"] = "1"
    try:
        return int(args.run(args) or 0)
    except VestigeError as e:
        print(f"vestige: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
