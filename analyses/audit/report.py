"""The audit report: one self-contained HTML page (plotly.js embedded once, all model text escaped).

Order: the verdict and evidence table first, then behaviour before / after / attacked, concept vectors
(cosine, Jaccard, top tokens before and after), the logit lens, recovery before and after ablating the
traces, and the interventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from analyses.audit.result import VERDICT_RULE, AuditResult
from analyses.html import Page


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.2f}"


def _label(r: AuditResult, label: str | None) -> str:
    return label or r.label


def _mean_attack(accs: dict) -> float:
    vals = [v for k, v in accs.items() if k != "none" and v is not None and v == v]
    return sum(vals) / len(vals) if vals else float("nan")


_CALLS = ("present", "gone", "inconclusive")


def verdict_table(results: Sequence[AuditResult], labels: Sequence[str]) -> pd.DataFrame:
    rows = []
    for r, lab in zip(results, labels):
        b = r.behaviour
        rec = r.recovery["unlearned"]
        abl = r.recovery["unlearned_after_ablation"]
        rows.append(
            {
                "model": lab,
                "concept": r.concept,
                "verdict": r.verdict,
                # the evidence behind the verdict: which families were called what
                **{call: ", ".join(c.family for c in r.traces if c.call == call) for call in _CALLS},
                "audited items": len(r.items),
                "split": r.items[0]["split"] if r.items else "",
                "forget acc base": b["forget_accuracy"]["base"],
                "forget acc unlearned": b["forget_accuracy"]["unlearned"],
                "unrelated acc base": b["unrelated_accuracy"]["base"],
                "unrelated acc unlearned": b["unrelated_accuracy"]["unlearned"],
                "vector cosine": r.concept_vectors["mean_cosine"],
                "vector Jaccard": r.concept_vectors["mean_jaccard"],
                "best attack acc": max(
                    (v for k, v in rec.items() if k != "none" and v is not None and v == v),
                    default=float("nan"),
                ),
                "best attack acc after ablation": max(
                    (v for k, v in abl.items() if k != "none" and v is not None and v == v),
                    default=float("nan"),
                ),
                "mean attack acc": _mean_attack(rec),
                "mean attack acc after ablation": _mean_attack(abl),
                "unrelated acc after ablation": r.interventions.get(
                    "unrelated_accuracy_under_ablation", {}
                ).get("traces", float("nan")),
                "patch-back acc": r.interventions["patch_vectors_from_base"]["forget_accuracy"],
            }
        )
    return pd.DataFrame(rows)


def families_table(results: Sequence[AuditResult], labels: Sequence[str]) -> pd.DataFrame:
    frames = []
    for r, lab in zip(results, labels):
        f = r.traces_frame()
        if len(f):
            frames.append(f.assign(model=lab)[["model", *f.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attacks_table(results: Sequence[AuditResult], labels: Sequence[str]) -> pd.DataFrame:
    """Every audit's per-attack rows (``AuditResult.attacks_frame``), intervals as text."""
    rows = []
    for r, lab in zip(results, labels):
        for a in r.extra.get("attacks", []):
            rows.append(
                {
                    "model": lab,
                    "attack": a["attack"],
                    "forget": f"{a['forget']:.2f} [{a['forget_lo']:.2f}, {a['forget_hi']:.2f}]",
                    "control": _fmt(a["control"]),
                    "floor": f"{a['floor']:.2f} [{a['floor_lo']:.2f}, {a['floor_hi']:.2f}]",
                    "net recovery": f"{a['net']:+.2f} [{a['net_lo']:+.2f}, {a['net_hi']:+.2f}]",
                    "base forget": _fmt(a["base_forget"]),
                    "seconds": r.seconds.get(a["attack"], float("nan")),
                }
            )
    return pd.DataFrame(rows)


def attack_heatmap(results: Sequence[AuditResult], labels: Sequence[str] | None = None) -> go.Figure | None:
    """Attack x audited model: the net recovery (held-out forget accuracy minus the floor's under the same
    attack); hover shows the 95% interval. None when no audit has per-attack rows."""
    labels = [_label(r, lab) for r, lab in zip(results, labels or [None] * len(results))]
    attacks: list[str] = []
    for r in results:
        for a in r.extra.get("attacks", []):
            if a["attack"] not in attacks:
                attacks.append(a["attack"])
    if not attacks:
        return None
    z, text = [], []
    for name in attacks:
        zr, tr = [], []
        for r in results:
            row = next((a for a in r.extra.get("attacks", []) if a["attack"] == name), None)
            zr.append(row["net"] if row else None)
            tr.append(f"{row['net']:+.2f} [{row['net_lo']:+.2f}, {row['net_hi']:+.2f}]" if row else "not run")
        z.append(zr)
        text.append(tr)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(labels),
            y=attacks,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y} on %{x}: net recovery %{text}<extra></extra>",
            zmin=-1,
            zmax=1,
            colorscale="RdBu_r",
            colorbar_title="net",
        )
    )
    fig.update_layout(height=120 + 32 * len(attacks), xaxis_title="audited model", yaxis_autorange="reversed")
    return fig


def _behaviour_figure(results, labels) -> go.Figure:
    fig = go.Figure()
    conds = ["base"] + [f"unlearned: {lab}" for lab in labels]
    first = results[0]
    fig.add_bar(
        name="base",
        x=["forget", "unrelated"],
        y=[first.behaviour["forget_accuracy"]["base"], first.behaviour["unrelated_accuracy"]["base"]],
    )
    for r, lab in zip(results, labels):
        fig.add_bar(
            name=lab,
            x=["forget", "unrelated"],
            y=[r.behaviour["forget_accuracy"]["unlearned"], r.behaviour["unrelated_accuracy"]["unlearned"]],
        )
    del conds
    fig.update_layout(barmode="group", yaxis_title="QA accuracy", yaxis_range=[0, 1.05], height=340)
    return fig


def _recovery_figure(results, labels) -> go.Figure:
    fig = go.Figure()
    for r, lab in zip(results, labels):
        for who, dash in (("unlearned", "unlearned"), ("unlearned_after_ablation", "after ablating traces")):
            rec = r.recovery[who]
            fig.add_bar(name=f"{lab} — {dash}", x=list(rec), y=[rec[k] for k in rec])
    fig.update_layout(
        barmode="group",
        yaxis_title="forget-QA accuracy",
        yaxis_range=[0, 1.05],
        height=380,
        xaxis_title="attack",
    )
    return fig


def _of_kind(r: AuditResult, kind: str) -> dict:
    """The concept-vector stage's entry for one locate kind (an audit from before the two kinds has
    only the one it located, under the top level)."""
    cv = r.concept_vectors
    return cv if kind == "concept" else cv.get("answer_writers") or {"compare": [], "top_tokens": []}


def _vector_figure(results, labels, kind: str = "concept") -> go.Figure:
    fig = go.Figure()
    for r, lab in zip(results, labels):
        comp = _of_kind(r, kind)["compare"]
        names = [f"L{c['layer']}.{c['neuron']}" for c in comp]
        fig.add_bar(name=f"{lab} cosine", x=names, y=[c["cosine"] for c in comp])
        fig.add_bar(name=f"{lab} Jaccard", x=names, y=[c["jaccard"] for c in comp])
    fig.update_layout(barmode="group", yaxis_title="base vs unlearned", yaxis_range=[0, 1.05], height=360)
    return fig


def _lens_figure(results, labels) -> go.Figure:
    fig = go.Figure()
    base = results[0].logit_lens["base"]["mean_logprob_by_layer"]
    fig.add_scatter(y=base, mode="lines+markers", name="base")
    for r, lab in zip(results, labels):
        fig.add_scatter(y=r.logit_lens["unlearned"]["mean_logprob_by_layer"], mode="lines+markers", name=lab)
    fig.update_layout(xaxis_title="layer", yaxis_title="answer log-prob (logit lens)", height=360)
    return fig


def _top_tokens_table(r: AuditResult, kind: str = "concept") -> pd.DataFrame:
    rows = []
    for t in _of_kind(r, kind)["top_tokens"]:
        rows.append(
            {
                "vector": f"L{t['layer']}.{t['neuron']}",
                "top tokens before": " · ".join(tok for tok, _ in t["top_before"]),
                "top tokens after": " · ".join(tok for tok, _ in t["top_after"]),
            }
        )
    return pd.DataFrame(rows)


def _probe_figure(results, labels) -> go.Figure | None:
    fig = go.Figure()
    first = results[0].extra.get("probes") or {}
    if not first:
        return None
    fig.add_scatter(y=first["base_accuracy"], mode="lines+markers", name="base (held-out)")
    fig.add_scatter(
        y=first["base_control_accuracy"], mode="lines", name="base control task", line={"dash": "dot"}
    )
    for r, lab in zip(results, labels):
        layers = r.extra["probes"]["transfer"]["layers"]
        fig.add_scatter(
            y=[x["applied_accuracy"] for x in layers], mode="lines+markers", name=f"{lab}: base probe"
        )
        fig.add_scatter(y=[x["refit_accuracy"] for x in layers], mode="lines", name=f"{lab}: refitted")
    fig.update_layout(
        xaxis_title="layer",
        yaxis_title=f"probe accuracy ({first['dataset']})",
        yaxis_range=[0, 1.05],
        height=380,
    )
    return fig


def _head_figure(r: AuditResult, label: str) -> go.Figure | None:
    heads = r.extra.get("heads") or {}
    if not heads.get("n_conflicts"):
        return None
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("base", label))
    for col, who in ((1, "base"), (2, "unlearned")):
        fig.add_heatmap(
            z=heads["effects"][who], colorscale="RdBu_r", zmid=0, showscale=col == 2, row=1, col=col
        )
    fig.update_layout(
        height=420, title="memory (red) vs context (blue) heads: attribution on knowledge conflicts"
    )
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text="layer", col=1)
    return fig


def _ches_figure(results, labels) -> go.Figure | None:
    fig = go.Figure()
    for r, lab in zip(results, labels):
        c = r.extra.get("ches") or {}
        if not c:
            continue
        text = [f"{p} → {a}" for p, a in c["retain"]]
        fig.add_scatter(
            x=c["max_normalized_ches"],
            y=c["logprob_loss"],
            mode="markers",
            text=text,
            name=f"{lab} (Spearman {_fmt(c['spearman'])})",
        )
    if not fig.data:
        return None
    fig.update_layout(
        xaxis_title="max length-normalized CHES with a forget item (base)",
        yaxis_title="answer log-prob lost after unlearning",
        height=380,
    )
    return fig


def audit_report(
    results: Sequence[AuditResult], labels: Sequence[str] | None = None, title: str = "vestige audit"
) -> Page:
    """Build the report page for one or several audits (e.g. one per unlearning method)."""
    labels = [_label(r, lab) for r, lab in zip(results, labels or [None] * len(results))]
    concepts = sorted({r.concept for r in results})
    page = Page(
        title, subtitle=f"concept: {', '.join(concepts)} — is the knowledge removed or only suppressed?"
    )
    page.heading("Verdict")
    page.table(verdict_table(results, labels))
    page.paragraph("Rule: " + VERDICT_RULE, cls="note")
    for r, lab in zip(results, labels):
        page.paragraph(f"{lab}: {r.verdict} — " + "; ".join(r.reasons), cls=r.verdict)
        for note in r.notes:
            page.paragraph(f"{lab}: {note}", cls="note")
    if any(r.traces for r in results):
        page.heading("Evidence by trace family: forget vs control vs floor (95% bootstrap intervals)")
        page.paragraph(
            "Each cell: mean [2.5%, 97.5%] over items of the family's per-item measure in the unlearned "
            "model (base columns: the same measure in the base). Only present / gone / inconclusive vote.",
            cls="note",
        )
        page.table(families_table(results, labels))
    if any(r.retain for r in results):
        page.heading(
            "Against the retain model: has the unlearned model reached a model that never saw the data?"
        )
        page.paragraph(
            "Per family, the unlearned and the retain model on the same forget items (both audited against "
            "the same base): reached when the paired interval of unlearned - retain lies within gone_margin "
            "times the base's signal; above: more of the concept left than in the retain model; below: "
            "further from it (over-forgetting). A reference, not a vote.",
            cls="note",
        )
        for r, lab in zip(results, labels):
            if r.retain:
                page.paragraph(f"{lab} vs the retain model {r.retain_model}")
                page.table(r.retain_frame())
    heat = attack_heatmap(results, labels)
    if heat is not None:
        page.heading("Attacks: net recovery over the floor (95% bootstrap intervals)")
        page.paragraph(
            "Each attack alone on the held-out forget items minus the same attack on facts never known (the "
            "floor): what an attack lifts there it taught, so only the excess counts.",
            cls="note",
        )
        page.figure(heat)
        page.table(attacks_table(results, labels))
    page.heading("Behaviour before, after and under attack")
    page.figure(_behaviour_figure(results, labels))
    page.heading("Recovery: attacks before and after ablating the traces")
    page.figure(_recovery_figure(results, labels))
    for kind, title, note in (
        (
            "concept",
            "Concept vectors (located on the base model)",
            "Middle-layer value vectors that fire on the concept's prompts and hold more of its tokens in "
            "their top-200 projection than chance; the concept_vectors and activations families read them.",
        ),
        (
            "answer_writers",
            "Answer writers (located on the base model)",
            "The value vectors with the largest direct effect on the concept's answers (minus their effect "
            "on unrelated answers), mostly in the last blocks; the interventions ablate and patch these. "
            "Reported, they do not vote.",
        ),
    ):
        page.heading(title)
        page.paragraph(note, cls="note")
        if not any(_of_kind(r, kind)["compare"] for r in results):
            page.paragraph("none located", cls="note")
            continue
        page.figure(_vector_figure(results, labels, kind))
        for r, lab in zip(results, labels):
            page.paragraph(f"{lab}: top tokens of each vector before and after unlearning")
            page.table(_top_tokens_table(r, kind))
    page.heading("Logit lens: the answer inside the model")
    page.figure(_lens_figure(results, labels))
    probe_fig = _probe_figure(results, labels)
    if probe_fig is not None:
        page.heading("Linear probes by layer: base, base probe on the unlearned model, refitted")
        page.figure(probe_fig)
    for r, lab in zip(results, labels):
        fig = _head_figure(r, lab)
        if fig is not None:
            page.heading(f"Memory and context heads — {lab}")
            page.figure(fig)
    ches_fig = _ches_figure(results, labels)
    if ches_fig is not None:
        page.heading("CHES similarity vs collateral damage")
        page.figure(ches_fig)
    for r, lab in zip(results, labels):
        if r.items:
            page.heading(f"Items — {lab}")
            page.table(r.items_frame())
    page.heading("Interventions in the unlearned model")
    page.paragraph(
        "Trace vectors: the answer writers that, zeroed in the base model 20 at a time, bring its forget "
        "accuracy to at most 25% of its start. Base vectors: the answer writers compared above.",
        cls="note",
    )
    rows = []
    for r, lab in zip(results, labels):
        iv = r.interventions
        rows.append(
            {
                "model": lab,
                "trace vectors": len(iv.get("trace_vectors", {}).get("vectors", [])),
                "ablate trace vectors: forget acc": iv["ablate_vectors"]["none"],
                "noise vectors: forget acc": iv["noise_vectors"]["forget_accuracy"],
                "noise ||n||/||v||": iv["noise_vectors"]["noise_ratio"],
                "patch base vectors: forget acc": iv["patch_vectors_from_base"]["forget_accuracy"],
                "patch base vectors: unrelated acc": iv["patch_vectors_from_base"]["unrelated_accuracy"],
                "patch base trace vectors: forget acc": iv.get("patch_trace_vectors_from_base", {}).get(
                    "forget_accuracy", float("nan")
                ),
            }
        )
    page.table(pd.DataFrame(rows))
    return page
