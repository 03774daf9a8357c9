"""``vestige unlearn --method M``: make an unlearned checkpoint with one of the registered methods.

The flags are generated from the configs: every field of ``UnlearnConfig`` is ``--field-name``, and every
field ``f`` of method ``m``'s own config is ``--m-f`` (e.g. ``--npo-beta``, ``--needle-vectors``,
``--rmu-alpha``). A method flag given with another ``--method`` is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from typing import Any

from analyses.cli import common
from analyses.unlearn import UnlearnConfig, methods, retain_qa_for, retain_texts_for, unlearn
from probes.data import Concept


def _flag(prefix: str, name: str) -> str:
    return "--" + (f"{prefix}-{name}" if prefix else name).replace("_", "-")


def _dest(prefix: str, name: str) -> str:
    return f"opt__{prefix}__{name}" if prefix else f"cfg__{name}"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _none_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def wrapped(text: str) -> Any:
        return None if text.lower() in ("none", "off") else parse(text)

    wrapped.__name__ = getattr(parse, "__name__", "value")
    return wrapped


def _add_field(group, prefix: str, f: dataclasses.Field, tp: Any) -> None:
    """One flag for dataclass field ``f`` of type ``tp`` (``int``, ``float``, ``str``, ``bool``, their
    ``| None`` forms, ``tuple[int, int]`` and ``tuple[str, ...]``; ``metadata['parse']`` for the rest)."""
    meta = f.metadata
    inner, optional = _unwrap_optional(tp)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    help_text = meta.get("help", "")
    if "default" not in help_text:
        help_text += f" [default: {shown if shown not in (None, '') else 'none'}]"
    kw: dict[str, Any] = {
        "dest": _dest(prefix, f.name),
        "default": argparse.SUPPRESS,
        "help": help_text.strip().replace("%", "%%"),
        "metavar": f.name.upper(),
    }
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if "parse" in meta:
        kw["type"] = meta["parse"]
    elif inner is bool:
        kw["action"] = argparse.BooleanOptionalAction
        del kw["metavar"]
    elif origin is tuple and args and args[-1] is Ellipsis:
        kw.update(nargs="+", type=args[0])
    elif origin is tuple:
        kw.update(nargs=len(args), type=args[0], metavar=("START", "STOP")[: len(args)])
    elif inner in (int, float, str):
        kw["type"] = _none_or(inner) if optional else inner
        if inner is float and optional and f.name.endswith("fraction"):
            kw["type"] = common.optional_fraction
    else:
        raise TypeError(f"no CLI flag for field {f.name!r} of type {tp!r}: give it metadata['parse']")
    if "choices" in meta:
        kw["choices"] = meta["choices"]
        kw.pop("metavar", None)
    group.add_argument(_flag(prefix, f.name), **kw)


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def register(sub) -> argparse.ArgumentParser:
    known = methods()
    p = sub.add_parser(
        "unlearn",
        help="unlearn a concept with a baseline method; writes a checkpoint",
        description="Make an unlearned copy of a model. The flags of one method (--METHOD-...) apply "
        "with that --method only; every method's options are listed below, each group with its loss.",
    )
    common.add_model_args(p)
    common.add_concept_args(p)
    p.add_argument("--method", required=True, choices=tuple(known))
    p.add_argument("--out", default=None, help="write the checkpoint and unlearn.json here")
    p.add_argument("--no-retain-text", action="store_true", help="retain on unrelated QA only")
    p.add_argument("--json", action="store_true", help="print unlearn.json on stdout")
    shared = p.add_argument_group("training (every method)")
    for f, tp in _fields(UnlearnConfig):
        if f.name != "method":
            _add_field(shared, "", f, tp)
    for m in known.values():
        fields = _fields(m.config)
        if fields:
            group = p.add_argument_group(f"--method {m.name}", m.summary)
            for f, tp in fields:
                _add_field(group, m.name, f, tp)
    return p


def config_from_args(args: argparse.Namespace) -> UnlearnConfig:
    """The ``UnlearnConfig`` (with the method's options) that the flags of ``args`` describe."""
    from analyses.unlearn import UnlearnError

    given = vars(args)
    shared = {k[len("cfg__") :]: v for k, v in given.items() if k.startswith("cfg__")}
    if "layers" in shared and shared["layers"] is not None:
        shared["layers"] = tuple(shared["layers"])
    options: dict[str, dict[str, Any]] = {}
    for k, v in given.items():
        if k.startswith("opt__"):
            _, method, name = k.split("__", 2)
            options.setdefault(method, {})[name] = tuple(v) if isinstance(v, list) else v
    stray = [m for m in options if m != args.method]
    if stray:
        flags = ", ".join(_flag(m, n) for m in stray for n in options[m])
        raise UnlearnError(
            f"{flags} do not apply to --method {args.method}",
            "each method's own flags start with its name",
            f"drop them, or use the --{args.method.replace('_', '-')}-... flags (vestige unlearn --help)",
        )
    method = methods()[args.method]
    opts = method.config(**options.get(args.method, {}))
    return UnlearnConfig(method=args.method, options=opts, **shared)


def check_data(
    args: argparse.Namespace, concept: Concept, concepts: list[Concept], retain: list[str] | tuple[()]
) -> None:
    """Refuse, before the model loads, a method whose data the concept file does not hold: the methods
    with a retain loss (``needs_retain``: gd, npo_kl, rmu) need the concept's ``unrelated_qa`` or other
    concepts' ``text``. A concept without ``text`` is not refused: the forget set is then its QA only."""
    from analyses.unlearn import UnlearnError

    method = methods()[args.method]
    if method.kind != "train" or not method.needs_retain:
        return
    if concept.unrelated_qa or any(t.strip() for t in retain):
        return
    others_have_text = any(t.strip() for t in retain_texts_for(concepts, concept))
    if args.no_retain_text and others_have_text:
        fix = (
            f'drop --no-retain-text (the other concepts\' text is the retain set), or add "unrelated_qa" to '
            f"{concept.concept!r}"
        )
    else:
        fix = (
            f'add "unrelated_qa" (questions the model must keep answering) to {concept.concept!r} in '
            f'{common.concept_file(args)}, or other concepts with "text" to that file (their text is the '
            "retain set), or use a method without a retain loss (ga, npo, dpo_idk, needle)"
        )
    raise UnlearnError(
        f"--method {args.method} needs retain data, and there is none",
        f"its loss keeps the model's other knowledge with a retain set; concept {concept.concept!r} has no "
        "unrelated_qa and "
        + (
            "--no-retain-text leaves out the other concepts' text"
            if args.no_retain_text and others_have_text
            else "no other concept of the file has text"
        ),
        fix,
    )


def run(args: argparse.Namespace) -> int:
    from probes.data import load_concepts

    cfg = config_from_args(args)
    path = common.concept_file(args)
    concept = common.load_concept_from_args(args)
    concepts = load_concepts(path)
    retain = () if args.no_retain_text else retain_texts_for(concepts, concept)
    check_data(args, concept, concepts, retain)
    common.check_out_dir(args.out)
    if not concept.text and methods()[args.method].kind == "train":
        print(
            f"note: concept {concept.concept!r} has no text; {args.method} trains on its "
            f"{len(concept.qa)} QA items only",
            file=sys.stderr,
        )
    model = common.load(args.model, args)
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
        o = result.params["options"]
        print(f"  edited {len(o['vectors'])} concept vectors ({o['mode']})")
    print(f"  forget accuracy     {b.forget_accuracy:.3f} -> {a.forget_accuracy:.3f}")
    print(f"  unrelated accuracy  {b.unrelated_accuracy:.3f} -> {a.unrelated_accuracy:.3f}")
    print(f"  forget logprob      {b.forget_logprob:.2f} -> {a.forget_logprob:.2f}")
    print(f"  unrelated logprob   {b.unrelated_logprob:.2f} -> {a.unrelated_logprob:.2f}")
    if result.heldout_before is not None and result.heldout_after is not None:
        hb, ha = result.heldout_before.forget_accuracy, result.heldout_after.forget_accuracy
        print(
            f"  held-out accuracy   {hb:.3f} -> {ha:.3f} ({len(result.heldout_items)} items nothing trained on)"
        )
    if args.out:
        saved = "PEFT adapter" if result.adapter is not None else "checkpoint"
        print(f"wrote {args.out} ({saved} + unlearn.json)")
    return 0
