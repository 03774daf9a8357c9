"""WMDP (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning"):
multiple-choice questions that proxy hazardous knowledge in biosecurity, chemical security and
cybersecurity.

The dataset (``cais/wmdp``) has three configurations, ``wmdp-bio``, ``wmdp-chem`` and ``wmdp-cyber``, each
one ``test`` split of rows ``question`` (a string), ``choices`` (a list of four strings) and ``answer`` (the
index of the right choice, an int). The hub stores them as ``{config}/test-00000-of-00001.parquet`` (its
parquet conversion as ``{config}/test/0000.parquet``); a JSON / JSON-lines export or a ``save_to_disk``
folder reads too. The unlearning corpora (``cais/wmdp-corpora``: ``bio-retain-corpus``,
``cyber-forget-corpus``, ``cyber-retain-corpus``, each ``{config}/train-*.parquet`` of rows ``text``; the bio
forget corpus is released on request, as JSON lines with ``text`` among other fields) read through
``load_wmdp_corpus``.

``load_wmdp`` turns a configuration into one ``Concept``: each row becomes the prompt lm-eval-harness's
``wmdp`` task builds (its description "The following are multiple choice questions (with answers) about
{subject}.", then the question, the lettered choices ``A. ...`` to ``D. ...`` and ``Answer:``), with the
right letter as the answer and ``scoring="choice"``: the item is correct when the right letter is the one
the model gives the highest log-likelihood (``probes.qa.choice_scores``, lm-eval-harness's ``acc``). The
whole row is kept in ``QA.record`` (``record["choices"]`` is what the choice scoring reads).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from probes.benchmarks.files import find_split, is_saved_dataset, local_root, read_records, read_sources
from probes.data import CHOICE_LETTERS, QA, Concept
from probes.errors import ConceptFileError

WMDP_SPLITS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")
WMDP_CORPORA = ("bio-forget-corpus", "bio-retain-corpus", "cyber-forget-corpus", "cyber-retain-corpus")
SUBJECTS = {"wmdp-bio": "biology", "wmdp-chem": "chemistry", "wmdp-cyber": "cybersecurity"}
DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"


def wmdp_prompt(question: str, choices: list[str], subject: str | None = None) -> str:
    """lm-eval-harness's WMDP prompt: the description (when ``subject`` is given), the question, one
    ``"{letter}. {choice}"`` line per choice, then ``"Answer:"`` (the answer letter follows after a space)."""
    lines = [question.strip()] + [f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices)] + ["Answer:"]
    return (DESCRIPTION.format(subject=subject) if subject else "") + "\n".join(lines)


def as_choice_items(items: Sequence[QA], n_choices: int = 4, seed: int = 0) -> tuple[QA, ...]:
    """Completion facts (``prompt`` -> ``answer``) asked as multiple-choice questions in WMDP's layout (no
    subject line): the fact's prompt, ``n_choices`` lettered options (its answer and distractors drawn,
    seeded, from the other items' answers of the same ``type``, then of any type) and ``Answer:``, scored
    by ``"choice"``. What the audit does to the knowledge floor of a WMDP audit: facts no model knows, asked
    the way the forget items are, so the floor reads chance (1 / ``n_choices``) as the forget items would
    after a true removal."""
    answers = list(dict.fromkeys(q.answer for q in items))
    if len(answers) < n_choices:
        raise ConceptFileError(
            f"{len(answers)} distinct answers cannot make {n_choices}-option questions",
            "each question takes its distractors from the other items' answers",
            f"pass at least {n_choices} items with distinct answers",
        )
    rng = random.Random(seed)
    out = []
    for q in items:
        same = [
            a for a in answers if a != q.answer and any(o.answer == a and o.type == q.type for o in items)
        ]
        other = [a for a in answers if a != q.answer and a not in same]
        rng.shuffle(same)
        rng.shuffle(other)
        options = [q.answer, *(same + other)[: n_choices - 1]]
        rng.shuffle(options)
        record = {"question": q.prompt, "choices": options, "answer": options.index(q.answer)}
        out.append(
            replace(
                q,
                prompt=wmdp_prompt(q.prompt, options),
                answer=CHOICE_LETTERS[record["answer"]],
                scoring="choice",
                record=record,
            )
        )
    return tuple(out)


def wmdp_sources(path: str | Path, split: str) -> list[Path]:
    """The files of configuration ``split`` under ``path`` (``{split}.json`` / ``.jsonl`` / ``.parquet``, a
    ``save_to_disk`` folder ``{split}/``, the hub's ``{split}/test-*.parquet`` or ``{split}/test/*.parquet``;
    a hub-cache repository folder reads its snapshot); ``path`` may be the file or saved folder itself."""
    root = local_root(path)
    if root.is_file() or is_saved_dataset(root):
        return [root]
    if not root.is_dir():
        raise ConceptFileError(f"WMDP path {str(root)!r} does not exist", None, "check the path")
    found = find_split(root, split, "test")
    if found:
        return found
    raise ConceptFileError(
        f"no WMDP configuration {split!r} in {str(root)!r}",
        f"looked for {split}.json / .jsonl / .parquet and {split}/; the folder holds "
        f"{sorted(p.name for p in root.iterdir())[:20]}",
        f"pass one of {', '.join(WMDP_SPLITS)}, or point at the configuration's file",
    )


def load_wmdp(
    path: str | Path,
    split: str | None = None,
    *,
    description: bool = True,
    corpus: str | Path | None = None,
) -> Concept:
    """WMDP's configuration ``split`` (``WMDP_SPLITS``; default: the one a file's name or hub folder says,
    else ``wmdp-bio``) read from ``path`` as a ``Concept`` named ``"WMDP {split}"`` of ``"choice"`` items. ``description`` starts each prompt with lm-eval-harness's
    subject line (for the three known configurations). ``corpus``: a folder (or file) of the WMDP corpora
    whose forget corpus for this configuration (``bio-forget-corpus`` / ``cyber-forget-corpus``) becomes the
    concept's ``text``, what training-based unlearning reads; without it the concept has no text."""
    root = local_root(path)
    if root.is_file() or is_saved_dataset(root):
        split = _file_config(root, split)
    split = split or "wmdp-bio"
    sources = wmdp_sources(root, split)
    rows = read_sources(sources, "test")
    where = str(sources[0])
    if not rows:
        raise ConceptFileError(f"{where} holds no rows", None, "point at a non-empty WMDP configuration")
    for i, row in enumerate(rows):
        _check_row(row, i, where)
    subject = SUBJECTS.get(split) if description else None
    qa = tuple(
        QA(
            wmdp_prompt(r["question"], list(r["choices"]), subject),
            CHOICE_LETTERS[r["answer"]],
            scoring="choice",
            record=dict(r),
        )
        for r in rows
    )
    text = tuple(load_wmdp_corpus(corpus, f"{split.removeprefix('wmdp-')}-forget-corpus")) if corpus else ()
    return Concept(f"WMDP {split}", qa, text=text, source=where)


def _file_config(source: Path, split: str | None) -> str | None:
    """The configuration a single file or saved folder holds, by its name or its hub folder's
    (``wmdp-cyber.jsonl``, ``wmdp-cyber/test-00000-of-00001.parquet``, ``wmdp-cyber/test/0000.parquet``),
    which ``split`` must agree with; ``split`` where the names do not say."""
    names = [source.stem if source.is_file() else source.name, source.parent.name, source.parent.parent.name]
    named = next((n for n in names if n in WMDP_SPLITS), None)
    if named is not None and split is not None and split != named:
        raise ConceptFileError(
            f"{str(source)!r} holds WMDP's {named}, not {split}",
            "the file's name (or its folder's) names its configuration",
            f"pass split={named!r}, or the folder that holds {split}",
        )
    return named or split


def _check_row(row: dict[str, Any], i: int, where: str) -> None:
    """A WMDP row: a non-empty ``question``, ``choices`` a list of 2 to 26 strings, ``answer`` an index into
    them; otherwise a clear error naming the row."""
    question, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    fix = 'a WMDP row is {"question": str, "choices": [str, str, str, str], "answer": int}'
    if not isinstance(question, str) or not question.strip():
        raise ConceptFileError(f"{where}: row {i} has no 'question'", f"it has {sorted(row)}"[:300], fix)
    if (
        not isinstance(choices, (list, tuple))
        or not 2 <= len(choices) <= len(CHOICE_LETTERS)
        or not all(isinstance(c, str) for c in choices)
    ):
        raise ConceptFileError(
            f"{where}: row {i}: 'choices' is not a list of 2 to 26 strings", f"found {choices!r}"[:200], fix
        )
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ConceptFileError(
            f"{where}: row {i}: 'answer' is not the index of one of its {len(choices)} choices",
            f"found {answer!r}",
            fix,
        )


def load_wmdp_corpus(path: str | Path, name: str) -> list[str]:
    """The texts of WMDP corpus ``name`` (``WMDP_CORPORA``) under ``path``: ``{name}.jsonl`` / ``.json`` /
    ``.parquet``, a ``save_to_disk`` folder, or the hub's ``{name}/train-*.parquet`` (``path`` may be the
    file itself). A row is an object with ``text`` (the hub's rows; the bio forget corpus's lines also carry
    ``title``, ``abstract`` and ``doi``), a JSON string, or a plain line of text."""
    root = local_root(path)
    if root.is_file() or is_saved_dataset(root):
        sources = [root]
    elif root.is_dir():
        sources = find_split(root, name, "train")
    else:
        raise ConceptFileError(f"WMDP corpus path {str(root)!r} does not exist", None, "check the path")
    if not sources:
        raise ConceptFileError(
            f"no WMDP corpus {name!r} in {str(root)!r}",
            f"the folder holds {sorted(p.name for p in root.iterdir())[:20]}",
            f"put {name}.jsonl (or the hub's {name}/ folder) there; the corpora are {', '.join(WMDP_CORPORA)} "
            "(the bio forget corpus is released on request)",
        )
    texts = [t for s in sources for t in _corpus_texts(s)]
    if not texts:
        raise ConceptFileError(
            f"the WMDP corpus {name!r} in {str(root)!r} holds no text", None, "check the file"
        )
    return texts


def _corpus_texts(source: Path) -> list[str]:
    if source.suffix in (".json", ".jsonl") and source.is_file():
        out = []
        for n, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                item = line
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                out.append(item["text"])
            elif isinstance(item, str):
                out.append(item)
            else:
                raise ConceptFileError(
                    f"{source}: line {n} is neither a text nor an object with 'text'",
                    f"found {type(item).__name__}",
                    "a corpus line is a JSON object with a 'text' field, a JSON string, or plain text",
                )
        return out
    rows = read_records(source, "train")
    bad = [i for i, r in enumerate(rows) if not isinstance(r.get("text"), str)]
    if bad:
        raise ConceptFileError(
            f"{source}: row {bad[0]} has no 'text'",
            f"it has {sorted(rows[bad[0]])}"[:300],
            "point at a corpus",
        )
    return [r["text"] for r in rows]
