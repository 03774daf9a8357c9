"""TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs"): 200 invented authors, 20
question-answer pairs each.

The dataset (``locuslab/TOFU``) ships one file per split, each a JSON-lines file of rows:

- ``forget01`` / ``forget05`` / ``forget10``, their complements ``retain99`` / ``retain95`` / ``retain90``,
  ``full``, ``holdout01`` / ``holdout05`` / ``holdout10``: ``question``, ``answer``;
- ``forget01_perturbed`` / ``forget05_perturbed`` / ``forget10_perturbed``, ``retain_perturbed``: also
  ``paraphrased_answer`` and ``perturbed_answer`` (a list of wrong answers written like the right one),
  and where the release has it ``paraphrased_question``;
- ``real_authors_perturbed``, ``world_facts_perturbed``: ``question``, ``answer``, ``perturbed_answer``.

``load_tofu`` turns a split into one ``Concept``: each row becomes ``QA("Question: {question}\\nAnswer:",
answer)`` (TOFU's own question and answer tags) with the whole row in ``QA.record``. Answers are sentences,
so they are scored by ROUGE recall, answer probability and the truth ratio (``probes.freeform``), not by
the data contract's prefix match.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from probes.benchmarks.files import SUFFIXES, read_records, require
from probes.data import QA, Concept
from probes.errors import ConceptFileError

if TYPE_CHECKING:
    from probes.model import Model

TOFU_SPLITS = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain90",
    "retain95",
    "retain99",
    "holdout01",
    "holdout05",
    "holdout10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)
PROMPT = "Question: {question}\nAnswer:"


def tofu_file(path: str | Path, split: str) -> Path:
    """The file of ``split`` under ``path`` (``{split}.json``, ``.jsonl`` or ``.parquet``, or a parquet
    file inside a ``{split}/`` folder, as the hub's parquet conversion lays it out); ``path`` may also be
    the file itself."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConceptFileError(f"TOFU path {str(path)!r} does not exist", None, "check the path")
    candidates = [path / f"{split}{s}" for s in SUFFIXES] + sorted((path / split).glob("*.parquet"))
    for c in candidates:
        if c.is_file():
            return c
    present = sorted(p.stem for p in path.iterdir() if p.suffix in SUFFIXES)
    raise ConceptFileError(
        f"no TOFU split {split!r} in {str(path)!r}",
        f"looked for {split}.json / .jsonl / .parquet; the folder holds {present[:20]}",
        f"pass one of the splits there, or a folder with {split}.json (TOFU splits: {', '.join(TOFU_SPLITS)})",
    )


def load_tofu(path: str | Path, split: str = "forget10", *, prompt: str = PROMPT) -> Concept:
    """TOFU's ``split`` read from ``path`` (a folder of split files, or one split file) as a ``Concept``
    named ``"TOFU {split}"``; ``prompt`` formats each question (``{question}``)."""
    file = tofu_file(path, split)
    rows = read_records(file)
    if not rows:
        raise ConceptFileError(f"{file} holds no rows", None, "point at a non-empty TOFU split")
    require(rows, ("question", "answer"), str(file), "TOFU")
    for i, row in enumerate(rows):
        pert = row.get("perturbed_answer")
        if pert is not None and (not isinstance(pert, list) or not all(isinstance(p, str) for p in pert)):
            raise ConceptFileError(
                f"{file}: row {i}: 'perturbed_answer' is not a list of strings",
                f"found {pert!r}"[:200],
                "TOFU's perturbed splits hold a list of wrong answers per question",
            )
    qa = tuple(
        QA(prompt.format(question=r["question"]), r["answer"].strip(), scoring="rouge", record=dict(r))
        for r in rows
    )
    return Concept(f"TOFU {split}", qa, source=str(file))


def tofu_metrics(
    model: Model, concept: Concept, *, forget: bool, max_new_tokens: int = 64, batch_size: int = 16
) -> dict[str, Any]:
    """TOFU's three numbers for ``model`` on a split read by ``load_tofu``: ROUGE-L recall of the greedy
    answers, the answer probability (``exp(-mean NLL per token)``; on splits without a paraphrased answer,
    TOFU's real-authors and world-facts sets, normalised over the true and the perturbed answers) and the
    truth-ratio statistic (``forget``: ``min(R, 1/R)``, else ``max(0, 1 - R)``; the paraphrased answer, or
    the answer where there is none, against the perturbed ones). Returns ``{"rougeL_recall",
    "probability", "truth_ratio", "n"}``; ``truth_ratio`` is None on splits without perturbed answers."""
    import torch

    from probes.freeform import free_form_scores, mean_answer_nll, truth_ratio_score, truth_ratios

    rows = [q.record or {} for q in concept.qa]
    scores = free_form_scores(model, concept.qa, max_new_tokens=max_new_tokens, batch_size=batch_size)
    prompts = [q.prompt for q in concept.qa]
    probability = float(torch.tensor(scores.probability).mean())
    perturbed = [list(r.get("perturbed_answer") or []) for r in rows]
    truth = None
    if perturbed and all(perturbed):
        paraphrased = [r.get("paraphrased_answer") or q.answer for r, q in zip(rows, concept.qa, strict=True)]
        truth = truth_ratio_score(
            truth_ratios(model, prompts, paraphrased, perturbed, batch_size=batch_size), forget=forget
        )
        if not any("paraphrased_answer" in r for r in rows):  # TOFU's eval_real_*: normalised probability
            true_p = torch.tensor(scores.probability, dtype=torch.float64)
            flat = [p for p, ks in zip(prompts, perturbed, strict=True) for _ in ks]
            false = torch.exp(-mean_answer_nll(model, flat, [k for ks in perturbed for k in ks]).double())
            sums, i = [], 0
            for ks in perturbed:
                sums.append(float(false[i : i + len(ks)].sum()))
                i += len(ks)
            probability = float((true_p / (true_p + torch.tensor(sums, dtype=torch.float64))).mean())
    return {"rougeL_recall": scores.rouge_l, "probability": probability, "truth_ratio": truth, "n": len(rows)}
