"""Concept files (the data contract of docs/data.md): load, check and pick one concept; where the bundled
data live."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from probes.errors import ConceptFileError


def _bundled_dir() -> Path:
    """The folder of the bundled data: the installed package ``vestige_data`` (the repository's ``data/``,
    mapped by pyproject.toml), or ``data/`` beside this package when running from a plain checkout."""
    try:
        return Path(str(importlib.resources.files("vestige_data")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "data"


DATA_DIR = _bundled_dir()
DEFAULT_CONCEPT_FILE = DATA_DIR / "concepts" / "concepts.json"
# the knowledge floor: facts about fictional entities that no model knows (data/floor/README.md);
# the same as data_path("floor", "fictional.json"), which is defined below
FLOOR_FILE = DATA_DIR / "floor" / "fictional.json"


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! or ? followed by white space), white space normalised."""
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


def data_path(*parts: str) -> Path:
    """A bundled data file, e.g. ``data_path("concepts", "concepts.json")``."""
    return DATA_DIR.joinpath(*parts)


SCORINGS = ("prefix", "rouge", "choice")
CHOICE_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # the options of a "choice" item, in order


@dataclass(frozen=True)
class QA:
    """A completion prompt whose correct greedy continuation starts with ``answer`` (``scoring="prefix"``,
    the data contract), or, for a sentence answer (``scoring="rouge"``, the benchmarks' free-form items),
    recalls at least half of it by ROUGE-L (``probes.qa.is_correct``). A multiple-choice item
    (``scoring="choice"``, WMDP's) lists its options in ``record["choices"]`` and lettered in the prompt,
    and ``answer`` is the right letter: it is correct when that letter is the option the model gives the
    highest log-likelihood after the prompt (``probes.qa.choice_scores``). ``record``: the item as a
    benchmark defines it, every field kept (``probes.benchmarks``; None for vestige's own files)."""

    prompt: str
    answer: str
    type: str | None = None
    scoring: str = "prefix"
    record: Mapping[str, Any] | None = field(default=None, compare=False, hash=False, repr=False)
    # the same fact asked the other way round (attribute -> entity): a completion whose answer names the
    # entity the prompt is about ("Ron Weasley is the best friend of the young wizard Harry" -> "Potter");
    # the ``reverse`` query form asks it (analyses.query_forms)
    reverse: QA | None = field(default=None, compare=False, hash=False, repr=False)
    # the same fact in other languages, by language code ("fr": "L'auteur de Harry Potter est J. K." ->
    # "Rowling"); the ``cross_lingual`` query form asks them
    translations: Mapping[str, QA] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"QA.scoring is {self.scoring!r}; it is one of {SCORINGS}")
        if self.scoring == "choice":
            letters = choice_letters(self)
            if self.answer not in letters:
                raise ValueError(f"QA.answer of a choice item is {self.answer!r}; it is one of {letters}")


def choice_letters(item: QA) -> tuple[str, ...]:
    """The option letters of a ``"choice"`` item: ``A``, ``B``, ... one per entry of ``record["choices"]``."""
    choices = (item.record or {}).get("choices")
    if not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(CHOICE_LETTERS):
        raise ValueError(
            f"a choice item lists its 2 to 26 options in record['choices']; this one has {choices!r}"[:200]
        )
    return tuple(CHOICE_LETTERS[: len(choices)])


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

    def split(self, heldout: float, seed: int = 0) -> tuple[Concept, Concept]:
        """``(trained, held_out)``: the QA split deterministically (by a seeded hash of each prompt, so the
        split does not depend on the order of the file) into items a method may train, stop or attack on,
        and ``heldout`` of them (at least one, at most all but one) that nothing may see. The trained
        side's ``text`` drops every sentence that states a held-out answer; the held-out side keeps the
        whole concept but its QA."""
        if not 0.0 < heldout < 1.0:
            raise ConceptFileError(
                f"cannot hold out a fraction {heldout} of {self.concept!r}'s QA",
                "the held-out fraction must be strictly between 0 and 1",
                "use e.g. 0.5 (half the items are evaluation items)",
            )
        if len(self.qa) < 2:
            raise ConceptFileError(
                f"{self.concept!r} has {len(self.qa)} QA item(s): nothing can be held out",
                "a held-out split needs at least one item to train on and one to evaluate",
                "add QA items to the concept, or run without a held-out split",
            )
        key = {q: hashlib.sha256(f"{seed}:{q.prompt}:{q.answer}".encode()).hexdigest() for q in self.qa}
        order = sorted(self.qa, key=key.__getitem__)
        n_out = min(len(order) - 1, max(1, round(heldout * len(order))))
        return self.split_off(q.prompt for q in order[n_out:])

    def split_off(self, trained: Iterable[str]) -> tuple[Concept, Concept]:
        """``(trained, held_out)`` for a known set of ``trained`` prompts (an unlearning run's
        ``trained_items``): the QA whose prompt is in it, with the text that states no other item's answer,
        and the concept with the rest of its QA."""
        seen = set(trained)
        held = tuple(q for q in self.qa if q.prompt not in seen)
        kept = tuple(q for q in self.qa if q.prompt in seen)
        text = drop_sentences_with(self.text, [q.answer for q in held])
        return replace(self, qa=kept, text=text), replace(self, qa=held)


def drop_sentences_with(texts: tuple[str, ...], answers: list[str]) -> tuple[str, ...]:
    """``texts`` without the sentences that contain any of ``answers`` (case-insensitive); texts left
    empty are dropped."""
    lowered = [a.lower() for a in answers]
    out = []
    for t in texts:
        kept = [s for s in split_sentences(t) if not any(a in s.lower() for a in lowered)]
        if kept:
            out.append(" ".join(kept))
    return tuple(out)


LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def _variant(raw: object, where: str, path: str) -> QA:
    """One ``reverse`` or translated variant of an item: ``{prompt, answer[, type]}``."""
    if not isinstance(raw, dict) or not {"prompt", "answer"} <= set(raw):
        raise ConceptFileError(
            f"{path}: {where} lacks 'prompt' or 'answer'",
            f"found {raw!r}"[:200],
            'write it as {"prompt": "Paris is the capital city of", "answer": "France"}',
        )
    prompt, answer = str(raw["prompt"]), str(raw["answer"]).strip()
    if not prompt.strip() or not answer:
        raise ConceptFileError(
            f"{path}: {where} has an empty prompt or answer", None, "give a non-empty prompt and answer"
        )
    kind = raw.get("type")
    if kind is not None and not isinstance(kind, str):
        raise ConceptFileError(
            f"{path}: {where} has a 'type' that is not a string",
            f"found {kind!r}"[:200],
            'write the type as a short string, e.g. "type": "country", or drop it (it is optional)',
        )
    return QA(prompt, answer, kind)


def _translations(raw: object, where: str, path: str) -> dict[str, QA]:
    if not isinstance(raw, dict):
        raise ConceptFileError(
            f"{path}: {where}: 'translations' must be an object keyed by language code",
            f"found {type(raw).__name__}",
            'write "translations": {"fr": {"prompt": ..., "answer": ...}}',
        )
    out = {}
    for lang, item in raw.items():
        if not LANGUAGE_CODE.match(str(lang)):
            raise ConceptFileError(
                f"{path}: {where}: translations key {lang!r} is not a language code",
                "translations are keyed by ISO 639 codes",
                'use e.g. "fr", "es", "de" or "pt-BR"',
            )
        if item is not None:  # null: no checked translation for this language
            out[str(lang)] = _variant(item, f"{where}: translations[{lang!r}]", path)
    return out


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
        kind = item.get("type")
        if kind is not None and not isinstance(kind, str):
            raise ConceptFileError(
                f"{path}: {where}: {key}[{i}] has a 'type' that is not a string",
                f"found {kind!r}"[:200],
                'write the type as a short string, e.g. "type": "surname", or drop it (it is optional)',
            )
        reverse = item.get("reverse")
        if reverse is not None:
            reverse = _variant(reverse, f"{where}: {key}[{i}]: reverse", path)
        translations = item.get("translations")
        translations = (
            _translations(translations, f"{where}: {key}[{i}]", path) if translations is not None else {}
        )
        items.append(QA(prompt, answer, kind, reverse=reverse, translations=translations))
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
    name = obj["concept"]
    if not isinstance(name, str) or not name.strip():
        raise ConceptFileError(
            f"{path}: {where}: 'concept' must be a non-empty string",
            f"found {name!r}"[:200],
            'write the name as a string, e.g. "concept": "Harry Potter"',
        )
    text = obj.get("text", [])
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise ConceptFileError(
            f"{path}: {where}: 'text' must be a string or a list of strings",
            f"found {text!r}"[:200],
            'write "text": ["a paragraph about the concept", ...], or drop it (it is optional)',
        )
    return Concept(
        concept=name,
        qa=qa,
        text=tuple(str(t) for t in text),
        unrelated_qa=_qa_list(obj.get("unrelated_qa", []), where, "unrelated_qa", path),
        source=path,
    )


def load_concepts(path: str | Path = DEFAULT_CONCEPT_FILE) -> list[Concept]:
    """All concepts of a concept file (one object or a list)."""
    path = Path(path)
    if path.is_dir():
        raise ConceptFileError(
            f"concept file {str(path)!r} is a directory",
            "a concept file is one JSON file",
            f"pass the JSON file inside it to --concept-file; the bundled file is {DEFAULT_CONCEPT_FILE}",
        )
    if not path.is_file():
        raise ConceptFileError(
            f"concept file {str(path)!r} does not exist",
            None,
            f"pass --concept-file PATH; the bundled file is {DEFAULT_CONCEPT_FILE}",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConceptFileError(
            f"{path}: not a UTF-8 text file",
            f"byte {e.start} cannot be decoded ({e.reason})",
            "save the concept file as UTF-8 JSON (docs/data.md)",
        ) from e
    except OSError as e:
        raise ConceptFileError(
            f"concept file {str(path)!r} cannot be read", e.strerror or str(e), "check its permissions"
        ) from e
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


def load_floor(path: str | Path = FLOOR_FILE) -> Concept:
    """The knowledge floor: one concept (the format of docs/data.md) of completion prompts about fictional
    entities with invented attributes, and answer-free background text about them. A model has never seen
    these facts, so every measurement on it gives the chance level a trace must beat (data/floor/README.md)."""
    return load_concept(path)
