"""``vestige audit --base M --unlearned M2``: removed or suppressed? Writes ``audit.json`` and
``report.html``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from analyses.behaviour import ATTACK_CHOICES
from analyses.cli import common
from probes.benchmarks import BENCHMARKS, load_benchmark
from probes.errors import VestigeError


def _relearn_params(value: str) -> str:
    from analyses.relearning import is_variant

    if not is_variant(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a relearning variant: use all, norms, biases, lora or layer:K (K a block index)"
        )
    return value


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("audit", help="removed or suppressed? audit.json + report.html")
    p.add_argument("--base", required=True, help="model spec of the original model")
    p.add_argument(
        "--unlearned",
        required=True,
        help="model spec of the unlearned model, or a PEFT adapter directory (merged into --base)",
    )
    p.add_argument(
        "--retain-model",
        default=None,
        metavar="M",
        help="a model that never saw the forget data (TOFU's retain90, MUSE's retrained model; a spec or a PEFT "
        "adapter over --base): audited against --base too, and every trace family of the unlearned model is "
        "compared with it on the same items (reached / above / below)",
    )
    common.add_concept_args(p)
    p.add_argument(
        "--benchmark",
        default=None,
        choices=BENCHMARKS,
        help="read the forget set from a published benchmark's local files instead of a concept file",
    )
    p.add_argument("--data", default=None, help="with --benchmark: the benchmark's folder, or one split file")
    p.add_argument(
        "--split",
        default=None,
        help="with --benchmark: the forget split (default: tofu forget10, muse-knowmem forget_qa, muse-verbmem "
        "forget, rwku forget, wmdp wmdp-bio; rwku takes TARGET/SPLIT, e.g. 'Stephen King/forget', conceptvectors "
        "[FILE/]CONCEPT); the benchmark's retain items found beside it join the control",
    )
    p.add_argument("--out", default="vestige-out/audit")
    p.add_argument("--json", action="store_true", help="also print the audit's JSON summary on stdout")
    p.add_argument(
        "--n-vectors", type=common.positive_int, default=None, help="concept vectors to locate (default 10)"
    )
    p.add_argument(
        "--relearn-steps",
        type=common.non_negative_int,
        default=None,
        help="relearning attack steps (0: off; default 10)",
    )
    p.add_argument(
        "--fact-relearn-steps",
        type=common.non_negative_int,
        default=None,
        help="fact-relearning attack steps: fine-tune on the facts the run trained on, test the held-out "
        "ones (0: off; default 10)",
    )
    p.add_argument(
        "--relearn-params",
        type=_relearn_params,
        default=None,
        help="which parameters the relearning attack moves (in place, restored exactly): all (default), or "
        "lean: norms, biases, layer:K or lora (a rank-8 update of every block weight)",
    )
    p.add_argument(
        "--fact-relearn-params",
        type=_relearn_params,
        default=None,
        help="which parameters fact relearning moves: all (default), norms, biases, layer:K (one block) or "
        "lora (a rank-8 update of every block weight)",
    )
    p.add_argument(
        "--lens-top-k",
        type=common.positive_int,
        default=None,
        help="the logit-lens trace counts an item whose answer ranks in the top k at some inner layer "
        "(default 10; smaller for a model with a small vocabulary)",
    )
    p.add_argument(
        "--sample-n",
        type=common.positive_int,
        default=None,
        help="samples per prompt of the 'sampled' attack (default 8, temperature 1, top-p 0.95)",
    )
    p.add_argument(
        "--soft-prompt-steps",
        type=common.non_negative_int,
        default=None,
        help="soft-prompt attack: Adam steps fitting input vectors on the facts the run trained on, scored "
        "on the held-out ones (0: off; default 40, --quick 0)",
    )
    p.add_argument(
        "--soft-prompt-tokens",
        type=common.positive_int,
        default=None,
        help="number of input vectors of the soft-prompt attack (default 8)",
    )
    p.add_argument(
        "--quantize-bits",
        type=common.non_negative_int,
        default=None,
        help="quantization attack: round the unlearned weights to this many bits (0: off; default 4)",
    )
    p.add_argument(
        "--quantize-groups",
        type=common.positive_int,
        nargs="+",
        default=None,
        help="group sizes to try, coarsest first; the first at which the base keeps 90%% of its accuracy is "
        "used (default 128 64 32)",
    )
    p.add_argument(
        "--attacks",
        nargs="+",
        choices=ATTACK_CHOICES,
        default=None,
        help="prompt attacks (default: prefix in_context rephrased; 'sampled' adds best of --sample-n samples)",
    )
    p.add_argument(
        "--trace-max",
        type=common.non_negative_int,
        default=None,
        help="at most this many vectors in the searched trace set (0: the located vectors; default 320)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a first look in minutes: 5 vectors, the prefix attack, 2 relearning steps, no trace search",
    )
    p.add_argument(
        "--heldout",
        type=common.fraction,
        default=None,
        help="audit only the held-out side of this split of the concept's QA (default: the items the run's "
        "unlearn.json did not train on; all items when there is none)",
    )
    p.add_argument("--heldout-seed", type=int, default=None, help="the unlearning run's --heldout-seed")
    p.add_argument(
        "--allow-trained-items",
        action="store_true",
        help="audit items the unlearning run trained on (refused by default: that measures memorisation)",
    )
    p.add_argument(
        "--attack-when-nothing-to-forget",
        action="store_true",
        help="run the weight attacks, membership and the trace search even when the base does not answer "
        "the concept's questions above the floor (skipped by default: the verdict is then 'nothing to "
        "forget' whatever they read)",
    )
    p.add_argument(
        "--floor",
        default=None,
        help="concept file of facts the base never knew, the chance level of every trace (default: the "
        "bundled fictional facts)",
    )
    p.add_argument("--seed", type=int, default=0)
    common.add_model_args(p, flag=None)
    return p


def run(args: argparse.Namespace) -> int:
    from analyses import audit as audit_mod
    from analyses.unlearn.run import retain_qa_for
    from probes.data import load_concept, load_concepts
    from probes.qa import validate_concept

    if (args.data or args.split) and not args.benchmark:
        raise VestigeError(
            "--data and --split read a benchmark's files, and no --benchmark was given",
            f"they name the files of one of {BENCHMARKS}",
            f"add --benchmark NAME (one of {', '.join(BENCHMARKS)}), or drop --data / --split",
        )
    retain: list = []
    if args.benchmark:
        if not args.data:
            raise VestigeError(
                f"--benchmark {args.benchmark} needs --data",
                "vestige reads benchmark files from local paths only (nothing is downloaded)",
                "pass --data FOLDER (e.g. the folder of TOFU's split files) or --data SPLIT_FILE",
            )
        concept, retain = load_benchmark(args.benchmark, args.data, args.split)
    else:
        concept = common.load_concept_from_args(args)
    floor = load_concept(args.floor) if args.floor else None
    # the control: the benchmark's retain items, then facts of the file's other concepts (those the base
    # answers count)
    control = (
        retain + list(concept.unrelated_qa) + retain_qa_for(load_concepts(common.concept_file(args)), concept)
    )
    common.check_out_dir(args.out)
    base = common.load(args.base, args)
    unlearned = common.load(args.unlearned, args, base=base)  # an adapter directory goes onto --base
    retain_model = common.load(args.retain_model, args, base=base) if args.retain_model else None
    validate_concept(base, concept)
    given = {
        "n_vectors": args.n_vectors,
        "relearn_steps": args.relearn_steps,
        "fact_relearn_steps": args.fact_relearn_steps,
        "relearn_params": args.relearn_params,
        "fact_relearn_params": args.fact_relearn_params,
        "lens_top_k": args.lens_top_k,
        "quantize_bits": args.quantize_bits,
        "soft_prompt_steps": args.soft_prompt_steps,
        "soft_prompt_tokens": args.soft_prompt_tokens,
        "sample_n": args.sample_n,
        "quantize_groups": tuple(args.quantize_groups) if args.quantize_groups else None,
        "attacks": tuple(args.attacks) if args.attacks else None,
        "trace_max": args.trace_max,
        "heldout": args.heldout,
        "heldout_seed": args.heldout_seed,
        "allow_trained_items": args.allow_trained_items or None,
        "attack_when_nothing_to_forget": args.attack_when_nothing_to_forget or None,
    }
    given = {k: v for k, v in given.items() if v is not None} | {"seed": args.seed}
    cfg = audit_mod.AuditConfig.quick(**given) if args.quick else audit_mod.AuditConfig(**given)
    result = audit_mod.audit(
        base,
        unlearned,
        concept,
        config=cfg,
        out=args.out,
        trained_items=trained_items(args.unlearned),
        floor=floor,
        control_qa=control,
        retain_model=retain_model,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.to_frame().to_string(index=False))
        if result.retain:
            print(f"against the retain model {result.retain_model}:")
            print(result.retain_frame()[["family", "call", "unlearned - retain"]].to_string(index=False))
        print(f"verdict: {result.verdict}\nwrote {args.out}/audit.json and {args.out}/report.html")
    return 0


def trained_items(spec: str) -> list[str] | None:
    """The prompts the unlearning run trained on, from ``unlearn.json`` beside a checkpoint that
    ``vestige unlearn`` wrote (None when there is none)."""
    record = Path(spec).expanduser() / "unlearn.json"
    if not record.is_file():
        return None
    try:
        return list(json.loads(record.read_text()).get("trained_items") or []) or None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
