"""The report is self-contained, escapes model text, and renders in headless Chromium without errors."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from analyses.audit import AuditResult, audit_report

EVIL = "<script>document.title='pwned'</script>\"quoted\" & <b>bold</b>"


def _result(concept: str = EVIL, verdict: str = "suppressed") -> AuditResult:
    behaviour = {
        "forget_accuracy": {"base": 1.0, "unlearned": 0.0},
        "unrelated_accuracy": {"base": 1.0, "unlearned": 0.9},
        "forget_logprob": {"base": -1.0, "unlearned": -9.0},
        "unrelated_logprob": {"base": -1.0, "unlearned": -1.2},
        "attacks": {},
    }
    compare = [{"layer": 20, "neuron": 5, "cosine": 0.98, "jaccard": 0.9, "l2_change": 0.01}]
    tops = [
        {"layer": 20, "neuron": 5, "top_before": [[EVIL, 1.0], ["Weasley", 0.5]], "top_after": [["Ron", 0.4]]}
    ]
    vectors = {
        "vectors": [],
        "compare": compare,
        "top_tokens": tops,
        "mean_cosine": 0.98,
        "mean_jaccard": 0.9,
    }
    lens = {
        "base": {"mean_logprob_by_layer": [-9, -5, -1]},
        "unlearned": {"mean_logprob_by_layer": [-9, -4, -8]},
        "unlearned_max_inner_top10_share": 1.0,
        "best_inner_layer": 1,
    }
    recovery = {
        "base": {"none": 1.0},
        "unlearned": {"none": 0.0, "prefix": 0.5, "relearn": 1.0},
        "unlearned_after_ablation": {"none": 0.0, "prefix": 0.0, "relearn": 0.5},
    }
    interventions = {
        "ablate_vectors": {"none": 0.0},
        "noise_vectors": {"forget_accuracy": 0.0, "noise_ratio": 1.0},
        "patch_vectors_from_base": {"forget_accuracy": 1.0, "unrelated_accuracy": 1.0},
    }

    def row(attack: str, forget: float, floor: float) -> dict:
        return {
            "attack": attack,
            "kind": "prompt",
            "forget": forget,
            "forget_lo": forget - 0.1,
            "forget_hi": forget + 0.1,
            "control": 0.9,
            "floor": floor,
            "floor_lo": 0.0,
            "floor_hi": floor + 0.1,
            "net": forget - floor,
            "net_lo": forget - floor - 0.2,
            "net_hi": forget - floor + 0.2,
            "base_forget": 1.0,
        }

    attacks = [row("none (greedy)", 0.0, 0.0), row(EVIL, 0.5, 0.1)]
    if verdict == "removed":
        attacks = attacks[:1]  # an audit that did not run the second attack
    return AuditResult(
        concept,
        verdict,
        (f"reason with {EVIL}",),
        behaviour,
        vectors,
        lens,
        recovery,
        interventions,
        {"attacks": attacks},
        seconds={"none (greedy)": 0.0, EVIL: 1.5},
    )


def test_attack_heatmap_shows_net_recovery_per_attack_and_model():
    from analyses.audit import attack_heatmap

    fig = attack_heatmap([_result(), _result(verdict="removed")], labels=["ga", "npo"])
    heat = fig.data[0]
    assert list(heat.y) == ["none (greedy)", EVIL] and list(heat.x) == ["ga", "npo"]
    assert [list(r) for r in heat.z] == [[0.0, 0.0], [pytest.approx(0.4), None]]
    assert heat.text[1][0] == "+0.40 [+0.20, +0.60]" and heat.text[1][1] == "not run"
    frame = _result().attacks_frame()
    assert list(frame["seconds"]) == [0.0, 1.5]
    empty = AuditResult("c", "removed", (), {}, {}, {}, {}, {})  # no attacks measured
    assert attack_heatmap([empty]) is None


def test_report_escapes_model_text_and_embeds_plotly_once(tmp_path):
    page = audit_report([_result(), _result(verdict="removed")], labels=["ga <i>x</i>", "npo"])
    html = page.render()
    assert "<script>document.title" not in html and "&lt;script&gt;document.title" in html
    assert "<b>bold</b>" not in html and "<i>x</i>" not in html
    assert len(re.findall(r"plotly\.js v\d", html)) == 1  # the library is embedded once
    assert not re.search(
        r"<script[^>]+src=|<link[^>]+href=", html
    )  # nothing loaded from outside: opens offline
    path = page.write(tmp_path / "report.html")
    assert path.read_text() == html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium is not installed (.ci/run installs Debian's chromium)"
)
def test_report_in_headless_chromium(tmp_path):
    path = audit_report([_result()], labels=["ga"]).write(tmp_path / "report.html")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--window-size=1200,1600",
    ]
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>pwned</title>" not in dom.stdout  # the injected script did not run
    assert "&lt;script&gt;document.title" in dom.stdout  # it is shown as text
    assert dom.stdout.count('class="plotly-graph-div') >= 4  # the figures were drawn by plotly.js
    console_errors = [
        l for l in dom.stderr.splitlines() if "CONSOLE" in l and ("Error" in l or "Uncaught" in l)
    ]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100  # not blank
