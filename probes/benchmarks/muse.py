"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"): news
articles (MUSE-News) and the Harry Potter books (MUSE-Books).

The release (``muse-bench/MUSE-News``, ``muse-bench/MUSE-Books``; locally ``data/{news,books}/``) holds,
per corpus:

- ``knowmem/``: ``forget_qa``, ``retain_qa`` (100 rows each) and their in-context examples
  ``forget_qa_icl``, ``retain_qa_icl`` (10 rows): ``question``, ``answer``;
- ``verbmem/forget``: ``prompt`` (the opening of a forget-set passage) and ``gt`` (its continuation);
- ``privleak/``: ``forget``, ``retain``, ``holdout``: texts (plain strings, or rows with ``text`` in the
  hub's parquet).

``load_muse_knowmem`` asks each question after the in-context examples, as MUSE's knowledge-memorization
test does ("Question: ...\\nAnswer: ..." blocks separated by blank lines); ``load_muse_verbmem`` keeps the
passage opening as the prompt and its continuation as the answer. Both are scored by ROUGE-L recall
(``probes.freeform``), MUSE's measure. ``load_muse_privleak`` returns the three text sets that
``probes.membership`` takes for PrivLeak.
"""

from __future__ import annotations

from pathlib import Path

from probes.benchmarks.files import SUFFIXES, read_records, require
from probes.data import QA, Concept
from probes.errors import ConceptFileError

KNOWMEM_SPLITS = ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")
PRIVLEAK_SPLITS = ("forget", "retain", "holdout")


def muse_file(path: str | Path, task: str, split: str) -> Path:
    """The file of ``task/split`` under the corpus folder ``path`` (``{task}/{split}.json``, ``.jsonl``,
    ``.parquet``, or the hub's ``{task}/{split}-*.parquet``); ``path`` may be the file itself."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    folder = path / task
    if not folder.is_dir():
        raise ConceptFileError(
            f"no MUSE {task!r} folder in {str(path)!r}",
            f"a MUSE corpus folder holds knowmem/, verbmem/ and privleak/; {str(path)!r} "
            + (
                "does not exist"
                if not path.exists()
                else f"holds {sorted(p.name for p in path.iterdir())[:12]}"
            ),
            "pass the corpus folder (e.g. muse_bench/data/news) or the split file itself",
        )
    candidates = [folder / f"{split}{s}" for s in SUFFIXES] + sorted(folder.glob(f"{split}-*.parquet"))
    for c in candidates:
        if c.is_file():
            return c
    raise ConceptFileError(
        f"no MUSE split {task}/{split} in {str(path)!r}",
        f"{task}/ holds {sorted(p.name for p in folder.iterdir())[:12]}",
        f"pass one of the splits there ({task} splits: "
        f"{', '.join(KNOWMEM_SPLITS if task == 'knowmem' else PRIVLEAK_SPLITS)})",
    )


def _qa_block(question: str, answer: str | None = None) -> str:
    return f"Question: {question}\nAnswer:" + (f" {answer}" if answer is not None else "")


def load_muse_knowmem(path: str | Path, split: str = "forget_qa", *, icl: bool = True) -> Concept:
    """MUSE's knowledge-memorization ``split`` (forget_qa or retain_qa) as a ``Concept`` named
    ``"MUSE knowmem {split}"``; with ``icl`` each question follows the split's in-context examples
    (``{split}_icl``, when the release has them)."""
    file = muse_file(path, "knowmem", split)
    rows = read_records(file)
    if not rows:
        raise ConceptFileError(f"{file} holds no rows", None, "point at a non-empty MUSE knowmem split")
    require(rows, ("question", "answer"), str(file), "MUSE knowmem")
    context = ""
    if icl and not split.endswith("_icl") and Path(path).expanduser().is_dir():
        try:
            examples = read_records(muse_file(path, "knowmem", f"{split}_icl"))
        except ConceptFileError:
            examples = []
        require(examples, ("question", "answer"), f"{split}_icl", "MUSE knowmem")
        context = "".join(_qa_block(e["question"], e["answer"]) + "\n\n" for e in examples)
    qa = tuple(
        QA(context + _qa_block(r["question"]), r["answer"].strip(), scoring="rouge", record=dict(r))
        for r in rows
    )
    return Concept(f"MUSE knowmem {split}", qa, source=str(file))


def load_muse_verbmem(path: str | Path, split: str = "forget") -> Concept:
    """MUSE's verbatim-memorization ``split``: each passage opening (``prompt``) with its continuation
    (``gt``) as the answer."""
    file = muse_file(path, "verbmem", split)
    rows = read_records(file)
    if not rows:
        raise ConceptFileError(f"{file} holds no rows", None, "point at a non-empty MUSE verbmem split")
    require(rows, ("prompt", "gt"), str(file), "MUSE verbmem")
    qa = tuple(QA(r["prompt"], r["gt"].strip(), scoring="rouge", record=dict(r)) for r in rows)
    return Concept(f"MUSE verbmem {split}", qa, source=str(file))


def load_muse_privleak(path: str | Path) -> dict[str, list[str]]:
    """MUSE's PrivLeak texts: ``{"forget", "retain", "holdout"}``, each a list of strings (the release's
    JSON lists of strings, or rows with ``text``)."""
    out = {}
    for split in PRIVLEAK_SPLITS:
        file = muse_file(path, "privleak", split)
        texts = _texts(file)
        if not texts:
            raise ConceptFileError(f"{file} holds no texts", None, "point at MUSE's privleak folder")
        out[split] = texts
    return out


def _texts(file: Path) -> list[str]:
    import json

    if file.suffix != ".parquet":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return list(data)
    rows = read_records(file)
    require(rows, ("text",), str(file), "MUSE privleak")
    return [r["text"] for r in rows]
