"""`vestige demo` end to end on the embedded model, with the Needle method (no training) and a small audit
so that it fits the suite; `make demo` runs the full demo (GA, NPO and Needle with default settings)."""

from __future__ import annotations

import json

import pytest

from analyses.audit import AuditConfig
from analyses.demo import run_demo


@pytest.mark.slow
def test_demo_writes_report_verdicts_and_timings(smol, tmp_path):
    cfg = AuditConfig(
        n_vectors=5,
        attacks=("prefix",),
        relearn_steps=1,
        probe_folds=2,
        head_top_k=3,
        batch_size=16,
        soft_prompt_steps=0,
    )
    out = tmp_path / "demo"
    results, table = run_demo(out, model=smol, methods=("needle",), audit_config=cfg, progress=False)
    demo = json.loads((out / "demo.json").read_text())
    audit = json.loads((out / "needle" / "audit.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    assert demo["methods"] == ["needle"] and demo["verdicts"][0]["verdict"] == audit["verdict"]
    assert audit["verdict"] in ("removed", "suppressed", "inconclusive")
    row = table.iloc[0]
    assert row["forget acc base"] == audit["behaviour"]["forget_accuracy"]["base"] == 1.0
    assert row["forget acc unlearned"] == audit["behaviour"]["forget_accuracy"]["unlearned"]
    assert row["best attack acc after ablation"] == max(
        v for k, v in audit["recovery"]["unlearned_after_ablation"].items() if k != "none"
    )
    assert timings["total_seconds"] > 0 and set(timings["per_method_seconds"]) == {"needle"}
    html = (out / "report.html").read_text()
    assert html.count("<html") == 1 and "needle" in html and "Harry Potter" in html
    assert results[0].verdict == audit["verdict"]
    # the run held half the items out and the audit scored those (the split read from its trained items)
    unlearn_json = json.loads((out / "needle" / "unlearn.json").read_text())
    held = set(unlearn_json["heldout_items"])
    assert held and held.isdisjoint(unlearn_json["trained_items"])
    assert {i["prompt"] for i in audit["items"]} == held and {i["split"] for i in audit["items"]} == {
        "heldout"
    }
    assert row["audited items"] == len(held) and row["split"] == "heldout"
    # which family voted what, in the table and in demo.json with the intervals behind each call
    calls = {t["family"]: t["call"] for t in audit["traces"]}
    for call in ("present", "gone", "inconclusive"):
        assert row[call] == ", ".join(f for f, c in calls.items() if c == call)
    assert {(f["family"], f["call"]) for f in demo["families"]} == set(calls.items())
    assert all(f["model"] == "needle" and "forget - floor" in f for f in demo["families"])
