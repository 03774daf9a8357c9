"""Concept files (DESIGN.md data contract): load, validate, pick one concept."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from probes.errors import ConceptFileError

if TYPE_CHECKING:
    from probes.model import Model

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_CONCEPT_FILE = DATA_DIR / "concepts" / "concepts.json"


@dataclass(frozen=True)
class QA:
    """A completion prompt whose correct greedy continuation starts with ``answer``."""

    prompt: str
    answer: str
    type: str | None = None


@dataclass(frozen=True)
class Concept:
    concept: str
    qa: tuple[QA, ...]
    text: tuple[str, ...] = ()
    unrelated_qa: tuple[QA, ...] = ()
    source: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.concept


def _qa_list(raw: object, where: str, key: str, path: str) -> tuple[QA, ...]:
    if not isinstance(raw, list):
        raise ConceptFileError(
            f"{path}: {where}: '{key}' must be a list of {{prompt, answer}} objects",
            f"found {type(raw).__name__}",
            f'write "{key}": [{{"prompt": ..., "answer": ...}}]',
        )
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not {"prompt", "answer"} <= set(item):
            raise ConceptFileError(
                f"{path}: {where}: {key}[{i}] lacks 'prompt' or 'answer'",
                f"found {item!r}"[:200],
                'each item is {"prompt": "Harry Potter\'s best friend is Ron", "answer": "Weasley"}',
            )
        prompt, answer = str(item["prompt"]), str(item["answer"]).strip()
        if not prompt.strip() or not answer:
            raise ConceptFileError(
                f"{path}: {where}: {key}[{i}] has an empty prompt or answer",
                None,
                "give a non-empty completion prompt and answer",
            )
        items.append(QA(prompt, answer, item.get("type")))
    return tuple(items)


def parse_concept(obj: object, path: str = "<concept>", index: int = 0) -> Concept:
    where = f"entry {index}"
    if not isinstance(obj, dict):
        raise ConceptFileError(
            f"{path}: {where} is not an object",
            f"found {type(obj).__name__}",
            'each concept is {"concept": NAME, "qa": [...], "text": [...], "unrelated_qa": [...]}',
        )
    if "concept" in obj:
        where = f"entry {index} ({obj['concept']!r})"
    missing = [k for k in ("concept", "qa") if k not in obj]
    if missing:
        raise ConceptFileError(
            f"{path}: {where} is missing {missing}",
            "the data contract requires them",
            'add "concept" (a name) and "qa" (a list of {prompt, answer})',
        )
    qa = _qa_list(obj["qa"], where, "qa", path)
    if not qa:
        raise ConceptFileError(
            f"{path}: {where} has an empty 'qa' list",
            "every measurement of forgetting needs questions about the concept",
            "add at least one {prompt, answer} item the model answers before unlearning",
        )
    text = obj.get("text", [])
    if isinstance(text, str):
        text = [text]
    return Concept(
        concept=str(obj["concept"]),
        qa=qa,
        text=tuple(str(t) for t in text),
        unrelated_qa=_qa_list(obj.get("unrelated_qa", []), where, "unrelated_qa", path),
        source=path,
    )


def load_concepts(path: str | Path = DEFAULT_CONCEPT_FILE) -> list[Concept]:
    """All concepts of a concept file (one object or a list)."""
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(
            f"concept file {str(path)!r} does not exist",
            None,
            f"pass --concept-file PATH; the bundled file is {DEFAULT_CONCEPT_FILE}",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConceptFileError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}",
            e.msg,
            "fix the JSON syntax (a validator such as `python -m json.tool FILE` shows it)",
        ) from e
    entries = raw if isinstance(raw, list) else [raw]
    if not entries:
        raise ConceptFileError(f"{path}: the file holds no concepts", None, "add at least one concept object")
    return [parse_concept(obj, str(path), i) for i, obj in enumerate(entries)]


def load_concept(path: str | Path = DEFAULT_CONCEPT_FILE, name: str | None = None) -> Concept:
    """One concept: ``name`` (case-insensitive) or, when the file holds exactly one, that one."""
    concepts = load_concepts(path)
    if name is None:
        if len(concepts) == 1:
            return concepts[0]
        raise ConceptFileError(
            f"{path}: holds {len(concepts)} concepts; which one?",
            None,
            f"pass --concept NAME, e.g. --concept {concepts[0].concept!r}",
        )
    for c in concepts:
        if c.concept.lower() == name.lower():
            return c
    names = ", ".join(repr(c.concept) for c in concepts[:12])
    raise ConceptFileError(
        f"{path}: no concept named {name!r}",
        f"the file has {names}" + (" ..." if len(concepts) > 12 else ""),
        "pass one of those names to --concept",
    )


def validate_concept(model: Model, concept: Concept) -> Concept:
    """Check that ``model``'s tokenizer can produce every answer of ``concept`` (``qa`` and
    ``unrelated_qa``): its tokens, as they continue the prompt, must not hold the unknown token, must have
    an output row in the model, and must decode (as completions are decoded, special tokens skipped) back to
    the answer; prompt and answer must fit the context. Raises ``ConceptFileError`` naming the file, the
    entry and the item; returns ``concept`` unchanged otherwise."""
    from probes.qa import answer_ids, is_correct

    tok = model.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    d_vocab, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    where = f"{concept.source or '<concept>'}: entry {concept.concept!r}"
    for key, items in (("qa", concept.qa), ("unrelated_qa", concept.unrelated_qa)):
        for i, q in enumerate(items):
            p_ids, a_ids = answer_ids(model, q.prompt, q.answer)
            decoded = tok.decode(a_ids, skip_special_tokens=True)
            problem = (
                f"{where}: {key}[{i}]: the answer {q.answer!r} cannot be produced by the tokenizer of "
                f"{model.name!r}"
            )
            fix = (
                "write the answer as plain text the model can generate (no special-token markup, no characters "
                "the tokenizer drops), or drop the item"
            )
            if not a_ids:
                raise ConceptFileError(problem, "it tokenizes to no token at all", fix)
            if unk is not None and unk in a_ids:
                raise ConceptFileError(problem, f"its tokens {a_ids} contain the unknown token {unk}", fix)
            if max(a_ids) >= d_vocab:
                raise ConceptFileError(
                    problem, f"token id {max(a_ids)} has no row in the model's {d_vocab}-row unembedding", fix
                )
            if not is_correct(decoded, q.answer):
                raise ConceptFileError(
                    problem,
                    f"its tokens {a_ids} decode to {decoded!r}, so no greedy completion can start with it",
                    fix,
                )
            if len(p_ids) + len(a_ids) > n_ctx:
                raise ConceptFileError(
                    f"{where}: {key}[{i}]: prompt and answer take {len(p_ids) + len(a_ids)} tokens, more "
                    f"than the model's context of {n_ctx}",
                    None,
                    "shorten the prompt",
                )
    return concept
