"""``vestige unlearn``: make an unlearned checkpoint with one of the baselines of ``analyses.unlearn``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from analyses.unlearn import METHODS, UnlearnConfig, retain_qa_for, retain_texts_for, unlearn


def _vectors(text: str) -> tuple[tuple[int, int], ...]:
    """``"3:120,5:7"`` -> ((3, 120), (5, 7))."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            layer, neuron = part.split(":")
            out.append((int(layer), int(neuron)))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{part!r} is not LAYER:NEURON") from e
    return tuple(out)


def _fraction(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def add_unlearn(sub, add_model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("unlearn", help="unlearn a concept with a baseline method; writes a checkpoint")
    p.add_argument("--model", default="smollm2-135m", help="model spec (default: the embedded SmolLM2)")
    add_model_args(p)
    p.add_argument("--concept-file", default=None, help="concept JSON (default: the bundled concepts)")
    p.add_argument("--concept", default=None, help="concept name in the file")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", default=None, help="write the checkpoint and unlearn.json here")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: per method)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per method)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=int, default=64, help="tokens per forget-text window")
    p.add_argument("--trainable", choices=("all", "mlp"), default=None)
    p.add_argument("--layers", type=int, nargs=2, default=None, metavar=("START", "STOP"))
    p.add_argument("--schedule", choices=("constant", "linear"), default="constant")
    p.add_argument(
        "--stop-fraction",
        type=_fraction,
        default=0.25,
        help="stop when forget accuracy <= this fraction of its start ('none': run every step)",
    )
    p.add_argument("--check-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--needle-vectors",
        type=_vectors,
        default=(),
        help="LAYER:NEURON,... for needle (default: locate them and edit until forget accuracy drops)",
    )
    p.add_argument("--needle-mode", choices=("zero", "noise"), default="zero")
    p.add_argument("--needle-scale", type=float, default=1.0, help="noise norm / vector norm")
    p.add_argument("--needle-step", type=int, default=20, help="located vectors added per search step")
    p.add_argument("--needle-max", type=int, default=320, help="at most this many located vectors")
    p.add_argument("--no-retain-text", action="store_true", help="retain on unrelated QA only")
    p.add_argument("--json", action="store_true", help="print unlearn.json on stdout")


def run_unlearn(args: argparse.Namespace, load: Callable) -> int:
    from probes.data import DEFAULT_CONCEPT_FILE, load_concept, load_concepts

    path = args.concept_file or DEFAULT_CONCEPT_FILE
    concept = load_concept(path, args.concept)
    concepts = load_concepts(path)
    retain = () if args.no_retain_text else retain_texts_for(concepts, concept)
    cfg = UnlearnConfig(
        method=args.method,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        window=args.window,
        trainable=args.trainable,
        layers=tuple(args.layers) if args.layers else None,
        schedule=args.schedule,
        stop_fraction=args.stop_fraction,
        check_every=args.check_every,
        seed=args.seed,
        needle_vectors=args.needle_vectors,
        needle_mode=args.needle_mode,
        needle_scale=args.needle_scale,
        needle_step=args.needle_step,
        needle_max=args.needle_max,
    )
    model = load(args.model, args)
    result = unlearn(
        model,
        concept,
        cfg,
        retain_texts=retain,
        retain_qa=retain_qa_for(concepts, concept),
        progress=not args.no_progress,
    )
    if args.out:
        result.save(args.out)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    b, a = result.before, result.after
    print(f"{result.method} on {concept.concept!r}: {result.steps} steps, {result.seconds:.1f} s")
    if result.method == "needle":
        print(
            f"  edited {len(result.params['needle_vectors'])} concept vectors ({result.params['needle_mode']})"
        )
    print(f"  forget accuracy     {b.forget_accuracy:.3f} -> {a.forget_accuracy:.3f}")
    print(f"  unrelated accuracy  {b.unrelated_accuracy:.3f} -> {a.unrelated_accuracy:.3f}")
    print(f"  forget logprob      {b.forget_logprob:.2f} -> {a.forget_logprob:.2f}")
    print(f"  unrelated logprob   {b.unrelated_logprob:.2f} -> {a.unrelated_logprob:.2f}")
    if args.out:
        print(f"wrote {args.out} (checkpoint + unlearn.json)")
    return 0
