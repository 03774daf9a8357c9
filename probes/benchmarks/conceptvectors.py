"""ConceptVectors (Hong et al. 2024, "Intrinsic Evaluation of Unlearning Using Parametric Knowledge
Traces"): common concepts, each with the MLP value vector that encodes it in LLaMA-2-7B-chat or OLMo-7B.

The release (``yihuaihong/ConceptVectors``, also the hub dataset ``YihuaiHong/ConceptVectors``) ships
``ConceptVectors_data/{model}_concepts.json`` and its ``_dev`` / ``_test`` halves, ``{model}`` being
``llama2-7b`` or ``olmo-7b`` (the model is named by the file only). Each file is a JSON array of concepts:

- ``Concept`` (the name), ``Layer`` and ``Dim`` (the concept vector: row ``Dim`` of the MLP output
  projection of layer ``Layer``, ``model.W_out(Layer)[Dim]`` in vestige's terms), ``id`` or ``ID`` (where
  present);
- ``QA``: ten questions about the concept (strings as released, e.g. ``" What is the capital city of
  Poland?\\n"``), without answers;
- ``text_completion``: passages split into ``First_half`` and ``Second_half``;
- ``unrelated_QA``: fifty questions about other concepts, without answers;
- ``wikipedia_content``: the concept's Wikipedia article.

ConceptVectors scores an unlearned model against the original model's own greedy answers (ROUGE-L and BLEU,
``evaluate_util.evaluate``: prompts ``"Question: {question}\\n Answer:"`` and ``"Please complete the
following paragraph: {First_half}"``, 100 new tokens). ``load_conceptvectors`` keeps those prompts: a text
completion's answer is its released ``Second_half``; a question has none in the release, so questions join
the concept only with a ``reference`` model, whose greedy answers (cut at the first blank line) become
theirs, as in ConceptVectors' evaluation. Every item is scored by ROUGE (``scoring="rouge"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.benchmarks.files import local_root, read_records
from probes.data import QA, Concept
from probes.errors import ConceptFileError

if TYPE_CHECKING:
    from probes.model import Model

CONCEPTVECTORS_MODELS = {"llama2-7b": "meta-llama/Llama-2-7b-chat-hf", "olmo-7b": "allenai/OLMo-7B"}
QUESTION = "Question: {question}\n Answer:"
COMPLETION = "Please complete the following paragraph: {first_half}"
ID_KEYS = ("id", "ID")


def conceptvectors_file(path: str | Path, file: str | None = None) -> Path:
    """The release file at ``path``: the file itself, or in the folder (or its ``ConceptVectors_data/``)
    the one named ``file`` (a name such as ``"llama2-7b_concepts_dev"``, with or without ``.json``), or the
    only ``*_concepts*.json`` there."""
    root = local_root(path)
    if root.is_file():
        return root
    if not root.is_dir():
        raise ConceptFileError(f"ConceptVectors path {str(root)!r} does not exist", None, "check the path")
    folder = root / "ConceptVectors_data" if (root / "ConceptVectors_data").is_dir() else root
    present = sorted(p.stem for p in folder.glob("*_concepts*.json"))
    if file is not None and (folder / f"{file.removesuffix('.json')}.json").is_file():
        return folder / f"{file.removesuffix('.json')}.json"
    if file is None and len(present) == 1:
        return folder / f"{present[0]}.json"
    raise ConceptFileError(
        f"no ConceptVectors file {file!r} in {str(folder)!r}" if file else f"which file of {str(folder)!r}?",
        f"the folder holds {present}",
        "name one of them (e.g. 'llama2-7b_concepts_dev/Poland' as the split), or pass the file itself",
    )


def conceptvectors_model(path: str | Path) -> str | None:
    """The HuggingFace model whose concept vectors the release file at ``path`` lists (from its name:
    ``llama2-7b_concepts*.json`` -> LLaMA-2-7B-chat, ``olmo-7b_concepts*.json`` -> OLMo-7B), or None."""
    stem = Path(path).name
    return next((hf for key, hf in CONCEPTVECTORS_MODELS.items() if stem.startswith(f"{key}_")), None)


def read_conceptvectors(path: str | Path, file: str | None = None) -> list[dict[str, Any]]:
    """The release's concept rows, checked: ``Concept`` a name, ``Layer`` and ``Dim`` ints, ``QA`` and
    ``unrelated_QA`` lists of strings, ``text_completion`` a list of ``{First_half, Second_half}``."""
    source = conceptvectors_file(path, file)
    rows = read_records(source)
    if not rows:
        raise ConceptFileError(f"{source} holds no concepts", None, "point at a ConceptVectors release file")
    for i, row in enumerate(rows):
        _check_row(row, i, str(source))
    return rows


def _check_row(row: dict[str, Any], i: int, where: str) -> None:
    fix = (
        'a ConceptVectors row is {"Concept": str, "Layer": int, "Dim": int, "QA": [str], '
        '"text_completion": [{"First_half": str, "Second_half": str}], "unrelated_QA": [str], ...}'
    )
    name = row.get("Concept")
    if not isinstance(name, str) or not name.strip():
        raise ConceptFileError(f"{where}: row {i} has no 'Concept'", f"it has {sorted(row)}"[:300], fix)
    for key in ("Layer", "Dim"):
        if isinstance(row.get(key), bool) or not isinstance(row.get(key), int) or row[key] < 0:
            raise ConceptFileError(
                f"{where}: {name!r}: {key!r} is not a non-negative int", f"found {row.get(key)!r}", fix
            )
    for key in ("QA", "unrelated_QA"):
        value = row.get(key, [])
        if not isinstance(value, list) or not all(isinstance(q, str) and q.strip() for q in value):
            raise ConceptFileError(
                f"{where}: {name!r}: {key!r} is not a list of questions", f"found {value!r}"[:200], fix
            )
    for j, t in enumerate(row.get("text_completion", [])):
        if not (
            isinstance(t, dict) and all(isinstance(t.get(k), str) for k in ("First_half", "Second_half"))
        ):
            raise ConceptFileError(
                f"{where}: {name!r}: text_completion[{j}] lacks 'First_half' or 'Second_half'",
                f"found {t!r}"[:200],
                fix,
            )


def _find(rows: list[dict[str, Any]], concept: str | None, where: str) -> dict[str, Any]:
    if concept is None:
        if len(rows) == 1:
            return rows[0]
        raise ConceptFileError(
            f"{where} holds {len(rows)} concepts; which one?",
            None,
            f"name one, e.g. {rows[0]['Concept']!r} (as the split: 'FILE/{rows[0]['Concept']}')",
        )
    for row in rows:
        if row["Concept"].casefold() == concept.casefold():
            return row
    names = ", ".join(repr(r["Concept"]) for r in rows[:12])
    raise ConceptFileError(
        f"{where}: no concept named {concept!r}",
        f"the file has {len(rows)} concepts: {names}" + (" ..." if len(rows) > 12 else ""),
        "pass one of those names (case-insensitive)",
    )


def concept_vector(
    path: str | Path, concept: str | None = None, *, file: str | None = None
) -> tuple[int, int]:
    """``(Layer, Dim)`` of ``concept``'s vector in the release file at ``path``: the row ``Dim`` of layer
    ``Layer``'s MLP output projection of the model the file names (``conceptvectors_model``)."""
    rows = read_conceptvectors(path, file)
    row = _find(rows, concept, str(conceptvectors_file(path, file)))
    return row["Layer"], row["Dim"]


def _item_record(row: dict[str, Any], key: str, index: int) -> dict[str, Any]:
    """An item's record: the concept's name, Layer, Dim and id as released, and the item's own element of
    ``key`` (``QA``, ``text_completion`` or ``unrelated_QA``) under that key, with its ``index``."""
    head = {k: row[k] for k in ("Concept", "Layer", "Dim", *ID_KEYS) if k in row}
    return {**head, key: row[key][index], "index": index}


def load_conceptvectors(
    path: str | Path,
    concept: str | None = None,
    *,
    file: str | None = None,
    reference: Model | None = None,
    max_new_tokens: int = 100,
    batch_size: int = 16,
) -> Concept:
    """``concept`` (its ``Concept`` name, case-insensitive; None: the file's only one) of the release file
    at ``path`` (``file`` picks one in a folder) as a ``Concept`` of that name:

    - ``qa``: with a ``reference`` model, each of ``QA`` as ``"Question: {question}\\n Answer:"`` answered by
      the reference's greedy answer (``max_new_tokens``, cut at the first blank line; a question it answers
      with nothing is left out); then each ``text_completion`` as ``"Please complete the following
      paragraph: {First_half}"`` answered by its ``Second_half``;
    - ``unrelated_qa``: with a reference, each of ``unrelated_QA``, answered the same way (without one the
      release has no answers for them, and the concept has none);
    - ``text``: ``wikipedia_content`` (the forget corpus).

    Each item's ``QA.record`` holds the concept's ``Concept``, ``Layer``, ``Dim`` (and ``id`` / ``ID``) and
    its own released element with its index (``_item_record``)."""
    source = conceptvectors_file(path, file)
    row = _find(read_conceptvectors(source), concept, str(source))
    return _concept(row, source, reference, max_new_tokens, batch_size)


def load_conceptvectors_all(path: str | Path, *, file: str | None = None) -> list[Concept]:
    """Every concept of the release file that has a text completion, without a reference model (their
    text completions only: a concept without one has no answered item)."""
    source = conceptvectors_file(path, file)
    rows = read_conceptvectors(source)
    return [
        _concept(r, source, None, 0, 1)
        for r in rows
        if any(t["Second_half"].strip() for t in r.get("text_completion", []))
    ]


def _concept(
    row: dict[str, Any], source: Path, reference: Model | None, max_new_tokens: int, batch_size: int
) -> Concept:
    questions: list[QA] = []
    unrelated: list[QA] = []
    if reference is not None:
        questions = _answered(reference, row, "QA", max_new_tokens, batch_size)
        unrelated = _answered(reference, row, "unrelated_QA", max_new_tokens, batch_size)
    completions = [
        QA(
            COMPLETION.format(first_half=t["First_half"]),
            t["Second_half"].strip(),
            scoring="rouge",
            record=_item_record(row, "text_completion", j),
        )
        for j, t in enumerate(row.get("text_completion", []))
        if t["Second_half"].strip()
    ]
    qa = tuple(questions + completions)
    if not qa:
        raise ConceptFileError(
            f"{source}: {row['Concept']!r} has no answered item",
            "its text completions are empty and no reference model answered its questions",
            "pass reference=the model the concept vectors were located in (the base model)",
        )
    wiki = row.get("wikipedia_content")
    text = (wiki,) if isinstance(wiki, str) and wiki.strip() else ()
    return Concept(row["Concept"], qa, text=text, unrelated_qa=tuple(unrelated), source=str(source))


def _answered(model: Model, row: dict[str, Any], key: str, max_new_tokens: int, batch_size: int) -> list[QA]:
    """The questions of ``row[key]`` with ``model``'s greedy answers, cut as ``is_correct`` cuts a completion
    (stripped, up to the first blank line). A question the model answers with nothing is left out: there is
    no answer to compare with, as for an item the base does not know."""
    prompts = [QUESTION.format(question=q) for q in row.get(key, [])]
    answers = model.generate(prompts, max_new_tokens, batch_size) if prompts else []
    out = []
    for j, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        answer = a.strip().split("\n\n", 1)[0].strip()
        if answer:
            out.append(QA(p, answer, scoring="rouge", record=_item_record(row, key, j)))
    return out
