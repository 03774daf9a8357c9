"""Concept vectors of one concept as a report: locate its value vectors, validate them causally against a
random control, and write ``concepts.json`` and ``report.html`` (ConceptVectors, Hong et al. 2024). What
``vestige concepts`` runs (``analyses.cli.concepts``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from analyses.html import Page
from probes import concepts as C
from probes.data import Concept
from probes.errors import VestigeError
from probes.model import Model
from probes.results import Result, write_json


@dataclass(frozen=True)
class ConceptReport(Result):
    """What ``vestige concepts`` writes: located vectors (best first), their top tokens, validation."""

    model: str
    concept: str
    vectors: tuple[dict, ...]
    validation: dict
    n_scored: int


def run_concept(
    model: Model,
    concept: Concept,
    *,
    n: int = 10,
    kind: str = "answer_writers",
    mode: str = "ablate",
    scale: float = 0.1,
    seed: int = 0,
    k_tokens: int = 20,
) -> ConceptReport:
    """locate (``kind``: see ``probes.concepts.locate``) + validate one concept; each vector carries its
    decoded top tokens."""
    found = C.locate(model, concept, n=n, kind=kind)
    if not found.vectors:
        raise VestigeError(
            f"no {kind} vector located for {concept.concept!r}",
            "no middle-layer value vector fires on the concept's prompts and holds more of its tokens in its "
            "top-200 projection than chance"
            if kind == "concept"
            else "no value vector has a positive direct effect on the answers beyond the unrelated ones",
            "try the other --kind, or give the concept more QA items and text",
        )
    val = C.validate(model, concept, found, mode=mode, scale=scale, seed=seed)
    vectors = []
    for v in found.vectors:
        top = C.top_tokens(model, v.layer, v.neuron, k_tokens)
        vectors.append({**v.to_dict(), "top_tokens": [t for t, _ in top]})
    validation = {
        **val.to_dict(),
        "beats_control": val.beats_control,
        "spares_unrelated": val.spares_unrelated,
    }
    return ConceptReport(model.name, concept.concept, tuple(vectors), validation, found.n_scored)


def effect_figure(report: ConceptReport) -> go.Figure:
    """Fall of the mean answer log-probability: located vectors vs the random control."""
    v = report.validation
    fig = go.Figure()
    fig.add_bar(
        name="concept QA", x=["located", "random control"], y=[v["target_drop"], v["control_target_drop"]]
    )
    fig.add_bar(
        name="unrelated QA",
        x=["located", "random control"],
        y=[v["unrelated_drop"], v["control_unrelated_drop"]],
    )
    fig.update_layout(
        barmode="group",
        yaxis_title="drop of mean answer log-prob (nats, + = worse)",
        title=f"{v['mode']} of {v['n_vectors']} vectors",
        height=380,
    )
    return fig


def report_page(report: ConceptReport) -> Page:
    v = report.validation
    page = Page(
        f"Concept vectors: {report.concept}", f"model {report.model}; {report.n_scored} value vectors scored"
    )
    verdict = (
        "specific: the located vectors carry the concept"
        if v["beats_control"] and v["spares_unrelated"]
        else "not specific: see the numbers below"
    )
    page.heading("Validation").paragraph(verdict, "verdict")
    page.figure(effect_figure(report))
    keys = [
        "target_drop",
        "unrelated_drop",
        "control_target_drop",
        "control_unrelated_drop",
        "target_acc_before",
        "target_acc_after",
        "unrelated_acc_before",
        "unrelated_acc_after",
        "control_target_acc",
        "noise_ratio",
    ]
    page.table(pd.DataFrame([{k: v[k] for k in keys}]))
    page.heading("Located vectors (best first)")
    rows = [
        {
            "layer": x["layer"],
            "neuron": x["neuron"],
            "projection_score": x["projection_score"],
            "effect_score": x["effect_score"],
            "top tokens": " | ".join(t.strip() or repr(t) for t in x["top_tokens"]),
        }
        for x in report.vectors
    ]
    page.table(pd.DataFrame(rows))
    page.paragraph(
        "projection_score: mean z-score of the concept's tokens in the vector's vocabulary projection; "
        "effect_score: direct effect on the concept's answers minus that on unrelated answers (logits).",
        "note",
    )
    return page


def write_outputs(report: ConceptReport, out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    return write_json(out / "concepts.json", report), report_page(report).write(out / "report.html")
