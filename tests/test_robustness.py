"""Robustness (issue #9): bad inputs get an error that names the problem, the place and the fix; interrupted
edits and audits leave no trace; memory stays bounded; runs are deterministic.

Items already covered elsewhere are not repeated here (see the issue's checklist): model loading refusals in
tests/test_model.py, the exception paths of weight edits in tests/test_concepts.py and tests/test_audit.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import analyses.audit as audit_mod
import analyses.audit.stages as audit_stages
from analyses.html import Page
from probes import concepts as C
from probes.chunks import OutOfMemoryError, run_chunked
from probes.data import QA, Concept, load_concept, load_concepts
from probes.edits import edited_vectors, patched_vectors, weights_checksum
from probes.errors import ConceptFileError, ContextLengthError, MismatchError, ModelLoadError, NonFiniteError
from probes.finite import check_activations, check_finite, first_nonfinite_layer
from probes.model import Model, load_model
from probes.qa import answer_logprobs, score_qa, validate_concept

ROOT = Path(__file__).resolve().parent.parent

TOY = Concept(
    "Harry Potter",
    qa=(
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("Harry Potter studied at the school of", "Hogwarts"),
    ),
    text=("Harry Potter is a wizard in novels by J. K. Rowling. His friend Ron Weasley is loyal.",),
    unrelated_qa=(QA("The capital of France is", "Paris"),),
)
GOOD = {
    "concept": "Harry Potter",
    "qa": [{"prompt": "Harry Potter's best friend is Ron", "answer": "Weasley"}],
    "unrelated_qa": [{"prompt": "The capital of France is", "answer": "Paris"}],
}


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _parts(e: pytest.ExceptionInfo) -> tuple[str, str, str]:
    return e.value.problem, e.value.cause or "", e.value.fix or ""


# ---- 1. concept files ------------------------------------------------------------------------------------
def test_concept_file_missing_keys_names_file_entry_and_fix(tmp_path):
    path = _write(tmp_path / "c.json", [GOOD, {"concept": "Dune", "text": ["Arrakis"]}])
    with pytest.raises(ConceptFileError) as e:
        load_concepts(path)
    problem, _, fix = _parts(e)
    assert str(path) in problem and "entry 1 ('Dune')" in problem and "missing ['qa']" in problem
    assert '"qa"' in fix

    item = dict(GOOD, qa=[{"prompt": "Harry Potter's best friend is Ron"}])
    with pytest.raises(ConceptFileError) as e:
        load_concepts(_write(tmp_path / "d.json", item))
    problem, _, fix = _parts(e)
    assert str(tmp_path / "d.json") in problem and "'Harry Potter'" in problem
    assert "qa[0] lacks 'prompt' or 'answer'" in problem and '"answer"' in fix


def test_concept_file_empty_qa(tmp_path):
    path = _write(tmp_path / "c.json", dict(GOOD, qa=[]))
    with pytest.raises(ConceptFileError) as e:
        load_concept(path)
    problem, _, fix = _parts(e)
    assert str(path) in problem and "entry 0 ('Harry Potter')" in problem and "empty 'qa'" in problem
    assert "add at least one" in fix


def test_concept_file_invalid_json(tmp_path):
    path = _write(tmp_path / "c.json", '{"concept": "Harry Potter", "qa": [}')
    with pytest.raises(ConceptFileError) as e:
        load_concept(path)
    problem, _, fix = _parts(e)
    assert str(path) in problem and "invalid JSON at line 1, column" in problem and "json.tool" in fix


def test_concept_name_not_in_file(tmp_path):
    path = _write(tmp_path / "c.json", [GOOD, dict(GOOD, concept="Dune")])
    with pytest.raises(ConceptFileError) as e:
        load_concept(path, "Star Wars")
    problem, cause, fix = _parts(e)
    assert str(path) in problem and "no concept named 'Star Wars'" in problem
    assert "'Harry Potter'" in cause and "'Dune'" in cause and "--concept" in fix


def test_answer_the_tokenizer_cannot_produce(gpt2, tmp_path):
    """An answer spelled with special-token markup tokenizes to a special token; completions are decoded
    without special tokens, so no greedy completion can ever match it."""
    bad = dict(
        GOOD, unrelated_qa=[GOOD["unrelated_qa"][0], {"prompt": "The chat ends with", "answer": "<|im_end|>"}]
    )
    path = _write(tmp_path / "c.json", bad)
    concept = load_concept(path)
    with pytest.raises(ConceptFileError) as e:
        validate_concept(gpt2, concept)
    problem, cause, fix = _parts(e)
    assert str(path) in problem and "entry 'Harry Potter'" in problem and "unrelated_qa[1]" in problem
    assert "'<|im_end|>' cannot be produced" in problem and "decode to" in cause and "plain text" in fix
    # the bundled concepts all pass, and a valid concept comes back unchanged
    assert validate_concept(gpt2, load_concept(name="Harry Potter")).concept == "Harry Potter"


def test_answer_without_an_output_row(gpt2):
    """A tokenizer larger than the model's unembedding: the answer's id has no logit to be generated."""
    small = Model.__new__(Model)
    small.__dict__.update(gpt2.__dict__)
    small.__dict__["cfg"] = type(gpt2.cfg)(**{**gpt2.cfg.__dict__, "d_vocab": 1000})
    with pytest.raises(ConceptFileError, match=r"has no row in the model's 1000-row unembedding"):
        validate_concept(small, TOY)


def test_cli_audit_refuses_bad_answer_before_work(gpt2, tmp_path, monkeypatch, capsys):
    import analyses.cli as cli
    from analyses.cli import common

    bad = dict(GOOD, qa=[{"prompt": "The chat ends with", "answer": "<|endoftext|>"}])
    path = _write(tmp_path / "c.json", bad)
    monkeypatch.setattr(common, "load", lambda spec, args, **_: gpt2)
    monkeypatch.setattr(audit_mod, "audit", lambda *a, **k: pytest.fail("the audit ran"))
    code = cli.main(
        ["--no-progress", "audit", "--base", "x", "--unlearned", "y", "--concept-file", str(path)]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "qa[0]" in err and "fix:" in err


# ---- 2. incompatible models ------------------------------------------------------------------------------
def _tiny_gpt2(tokenizer) -> Model:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_inner=128, attn_implementation="eager")
    return Model(GPT2LMHeadModel(cfg), tokenizer, name="tiny")


def test_different_shapes_refused_before_any_work(gpt2, tmp_path, monkeypatch):
    """Same architecture class, other shapes: the audit stops in check_compatible, naming each difference,
    before any stage runs or any file is written."""
    tiny = _tiny_gpt2(gpt2.tokenizer)
    for stage in ("_behaviour", "_relearn", "_concept_vectors", "_lens", "_interventions"):
        monkeypatch.setattr(audit_stages, stage, lambda *a, **k: pytest.fail("a stage ran"))
    with pytest.raises(MismatchError) as e:
        audit_mod.audit(gpt2, tiny, TOY, out=tmp_path / "out", progress=False)
    cause = e.value.cause
    for diff in ("n_layers: 12 vs 2", "n_heads: 12 vs 2", "d_model: 768 vs 64", "d_mlp: 3072 vs 128"):
        assert diff in cause
    assert "architecture" not in cause and "vocab_hash" not in cause
    assert not (tmp_path / "out").exists()
    # covered in tests/test_audit.py: other architecture (test_mismatched_models_refused_before_work),
    # other tokenizer (test_tokenizer_mismatch_named)


def test_different_tokenizer_refused_by_compare(gpt2):
    import copy

    other = Model.__new__(Model)
    other.__dict__.update(gpt2.__dict__)
    tok = copy.deepcopy(gpt2.tokenizer)
    tok.add_tokens(["<vestige-extra>"])
    other.tokenizer = tok  # check_compatible: tests/test_audit.py::test_tokenizer_mismatch_named
    with pytest.raises(MismatchError, match="vocab_hash"):
        C.compare(gpt2, other, [(0, 1)])


# ---- 3. context length -----------------------------------------------------------------------------------
def test_generation_past_the_context_is_refused(gpt2):
    prompt = "word " * 1000  # fits 1024 tokens, but not with 100 new tokens
    with pytest.raises(ContextLengthError) as e:
        gpt2.generate([prompt], max_new_tokens=100)
    assert "plus 100 new tokens exceeds the model's context of 1024" in e.value.problem
    with pytest.raises(ContextLengthError, match="more than the model's context of 1024"):
        answer_logprobs(gpt2, ["word " * 1100], ["Paris"])
    # the tokenizer path itself: tests/test_model.py::test_context_length_is_checked


def test_haystack_longer_than_context_is_refused(gpt2):
    from probes.retrieval import build_tests, decode, load_haystack, load_needles

    needles = load_needles()[:1]
    ok = build_tests(gpt2, needles, load_haystack(), lengths=(300,), depths=(0.5,), chat=False)
    assert len(ok[0].ids) <= gpt2.cfg.n_ctx
    with pytest.raises(ContextLengthError) as e:
        build_tests(gpt2, needles, load_haystack(), lengths=(2000,), depths=(0.5,), chat=False)
    assert "needle-in-a-haystack prompt for length 2000" in e.value.problem
    assert "context of 1024" in e.value.problem and "does not truncate" in e.value.cause
    with pytest.raises(ContextLengthError, match="exceeds the model's context of 1024"):
        decode(gpt2, list(range(100, 1110)), max_new_tokens=16)


# ---- 4. NaN / inf ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diverged(gpt2):
    """A copy of the gpt2 fixture with one NaN in layer 5's MLP input weight (a diverged unlearning run)."""
    model = gpt2.copy()
    with torch.no_grad():
        model.hf.transformer.h[5].mlp.c_fc.weight[3, 7] = float("nan")
    model.name = "diverged"
    return model


def test_nan_weight_named_with_its_layer(gpt2, diverged):
    check_finite(gpt2)  # finite: no error
    with pytest.raises(NonFiniteError) as e:
        check_finite(gpt2, diverged)
    assert "transformer.h.5.mlp.c_fc.weight (layer 5)" in e.value.problem and "1 NaN" in e.value.problem
    assert "'diverged'" in e.value.problem and "learning rate" in e.value.fix
    assert (e.value.parameter, e.value.layer) == ("transformer.h.5.mlp.c_fc.weight", 5)


def test_inf_outside_the_blocks_named(gpt2):
    model = gpt2.copy()
    with torch.no_grad():
        model.hf.transformer.ln_f.weight[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"transformer\.ln_f\.weight \(outside the transformer blocks\)"):
        check_finite(model)


def test_nan_activations_first_layer_named(gpt2, diverged):
    assert first_nonfinite_layer(gpt2, ["The capital of France is"]) is None
    assert first_nonfinite_layer(diverged, ["The capital of France is"]) == 5
    with pytest.raises(NonFiniteError) as e:
        check_activations(diverged, ["The capital of France is"])
    assert "first appear in the output of layer 5" in e.value.problem
    assert "transformer.h.5.mlp.c_fc.weight" in e.value.cause and e.value.layer == 5


def test_nan_model_scores_raise_instead_of_a_nan_table(diverged):
    with pytest.raises(NonFiniteError, match="output of layer 5"):
        score_qa(diverged, TOY.qa)


def test_audit_refuses_a_nan_model_before_any_work(gpt2, diverged, tmp_path, monkeypatch):
    monkeypatch.setattr(audit_stages, "_behaviour", lambda *a, **k: pytest.fail("a stage ran"))
    with pytest.raises(NonFiniteError, match=r"layer 5"):
        audit_mod.audit(gpt2, diverged, TOY, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "stages").exists()


# ---- 5. interrupted weight edits -------------------------------------------------------------------------
def test_keyboard_interrupt_inside_edits_restores_bitwise(gpt2, diverged):
    """KeyboardInterrupt is not an Exception: the restores must be in ``finally`` (the Exception paths:
    tests/test_concepts.py::test_edits_restore_bitwise_also_on_exception, ::test_edits_restore_on_llama_layout,
    tests/test_audit.py::test_patched_vectors_restore_bitwise_on_exception)."""
    refs = [(5, 3), (5, 4), (9, 100)]
    before = weights_checksum(gpt2)
    for mode in ("ablate", "noise"):
        with pytest.raises(KeyboardInterrupt):
            with edited_vectors(gpt2, refs, mode, scale=1.0):
                assert weights_checksum(gpt2) != before
                raise KeyboardInterrupt
        assert weights_checksum(gpt2) == before, mode
    # target = the NaN model, source = gpt2: the NaN-free base rows go in, the NaN rows come back
    target_before = weights_checksum(diverged)
    with pytest.raises(KeyboardInterrupt):
        with patched_vectors(diverged, gpt2, refs):
            raise KeyboardInterrupt
    assert weights_checksum(diverged) == target_before


def test_interrupt_in_the_middle_of_applying_an_edit(gpt2, monkeypatch):
    """Interrupted after the first vector was edited and before the last: the edited ones come back."""
    refs = [(2, 10), (2, 11), (7, 12)]
    before = weights_checksum(gpt2)
    real_randn, calls = torch.randn, []

    def randn(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_randn(*a, **k)

    monkeypatch.setattr(torch, "randn", randn)
    with pytest.raises(KeyboardInterrupt):
        with edited_vectors(gpt2, refs, "noise", scale=1.0):
            pytest.fail("the block must not run")
    monkeypatch.undo()
    assert weights_checksum(gpt2) == before

    source = gpt2.copy()
    with torch.no_grad():
        for layer, neuron in refs:
            source.W_out(layer)[neuron].add_(1.0)
    real_w_out, seen = source.W_out, []

    def w_out(layer):
        seen.append(layer)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real_w_out(layer)

    monkeypatch.setattr(source, "W_out", w_out)
    with pytest.raises(KeyboardInterrupt):
        with patched_vectors(gpt2, source, refs):
            pytest.fail("the block must not run")
    assert weights_checksum(gpt2) == before


# ---- 6 and 10. a killed audit resumes; the same seed gives the same JSON -------------------------------
_AUDIT_SCRIPT = """
import sys
import torch
from analyses.audit import AuditConfig, audit
from probes.data import load_concept
from probes.model import load_model

out, concept_file, probe_file = sys.argv[1:4]
torch.set_num_threads(1)
base = load_model("gpt2-seeded", device="cpu", seed=0)
unlearned = base.copy()
with torch.no_grad():
    for layer, neuron in [(3, 7), (5, 100), (8, 2000)]:
        unlearned.W_out(layer)[neuron].zero_()
cfg = AuditConfig(n_vectors=3, attacks=("prefix",), relearn_steps=0, probe_dataset=probe_file,
                  probe_folds=2, batch_size=8, soft_prompt_steps=0)
audit(base, unlearned, load_concept(concept_file), config=cfg, out=out, progress=False)
"""

_PROBE_DATA = {
    "attribute": "country",
    "template": "{entity} is a city in",
    "items": [
        {"entity": e, "label": "France"} for e in ("Lyon", "Paris", "Marseille", "Nice", "Lille", "Toulouse")
    ]
    + [{"entity": e, "label": "Japan"} for e in ("Tokyo", "Osaka", "Kyoto", "Nagoya", "Sapporo", "Kobe")],
}


def _stage_files(out: Path) -> list[Path]:
    d = out / "stages"
    return sorted(p for p in d.glob("*.json") if not p.name.startswith(".")) if d.exists() else []


@pytest.mark.slow
def test_killed_audit_resumes_and_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL once the first stage is on disk; a rerun reads that stage (not recomputed, file untouched),
    ignores a half-written stage file, and writes the same audit.json as an uninterrupted run in another
    process (which is the determinism check: same seed, fresh process, identical JSON)."""
    script = _write(tmp_path / "run_audit.py", _AUDIT_SCRIPT)
    concept = _write(tmp_path / "concept.json", dict(GOOD, text=list(TOY.text)))
    probe = _write(tmp_path / "probe.json", _PROBE_DATA)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1", PYTHONPATH=str(ROOT))

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), str(out), str(concept), str(probe)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    reference = start(fresh)  # runs beside the one we kill (2 cores)
    victim = start(killed)
    deadline = time.monotonic() + 300
    while not _stage_files(killed):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no stage file appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "audit.json").exists()  # it really died mid-run
    done = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in _stage_files(killed)}
    assert done and all(json.loads(b)["key"] for _, b in done.values())  # complete JSON, never a half file
    # a half-written stage (as a non-atomic writer would leave it) must be recomputed, not read
    half = killed / "stages" / "interventions.json"
    half.write_text('{"key": "abc", "value": {"ablate_vec')
    # and so must the temporary file of a write the kill cut short (whichever stage it hit)
    (killed / "stages" / ".interventions.json.k1ll3d.tmp").write_text('{"key": "abc", "val')

    resumed = start(killed)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    log = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, log[-3000:]

    for name, (mtime, data) in done.items():  # read from the cache, not rewritten
        path = killed / "stages" / name
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data, name
    assert json.loads(half.read_text())["value"]["ablate_vectors"]  # recomputed, complete
    assert not list((killed / "stages").glob(".*.tmp"))
    a, b = (killed / "audit.json").read_text(), (fresh / "audit.json").read_text()
    assert json.loads(a)["concept"] == "Harry Potter"
    assert a == b
    for name in ("behaviour", "relearn", "concept_vectors", "interventions"):
        sa = json.loads((killed / "stages" / f"{name}.json").read_text())["value"]
        sb = json.loads((fresh / "stages" / f"{name}.json").read_text())["value"]
        assert _untimed(sa) == _untimed(sb), name
        assert _untimed(sa) != sa or name != "behaviour"  # the wall-clock seconds were there to drop


def _untimed(value):
    """A stage value without its wall-clock ``seconds`` (cached with the stage, never in audit.json): the
    only numbers two runs of the same seed may differ in."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


# ---- 7. loading ------------------------------------------------------------------------------------------
class _Payload:
    """A pickle that runs code when unpickled with weights_only=False (it creates a directory)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_stage_cache_drops_the_temporary_file_of_a_cut_write(tmp_path):
    """A kill between mkstemp and the rename leaves ``.<stage>.json.*.tmp``; the rerun that completes the
    stage removes it, reads no half file, and leaves other stages' files alone."""
    from analyses.audit.cache import StageCache

    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / ".relearn.json.k1ll3d.tmp").write_text('{"key": "k", "val')
    (stages / "lens.json").write_text(json.dumps({"key": "k", "value": {"x": 1}}))
    cache = StageCache(tmp_path, "k")
    calls = []
    assert cache.get_or_run("lens", lambda: calls.append("lens") or {"x": 2}) == {"x": 1}
    assert cache.get_or_run("relearn", lambda: calls.append("relearn") or {"y": 3}) == {"y": 3}
    assert calls == ["relearn"]
    assert sorted(p.name for p in stages.iterdir()) == ["lens.json", "relearn.json"]
    assert json.loads((stages / "relearn.json").read_text()) == {"key": "k", "value": {"y": 3}}


def test_allowed_pickle_still_loads_with_weights_only(gpt2, tmp_path):
    """allow_pickle=True loads with weights_only=True: a checkpoint carrying code is refused, by name, and
    the code never runs. (Refused without the flag, loaded with it, remote code, unsupported GGUF:
    tests/test_model.py::test_pickle_checkpoint_refused_then_allowed, ::test_remote_code_refused,
    ::test_unsupported_gguf_named.)"""
    ckpt, marker = tmp_path / "ckpt", tmp_path / "pwned"
    ckpt.mkdir()
    state = dict(gpt2.state_dict(), payload=_Payload(marker))
    torch.save(state, ckpt / "pytorch_model.bin")
    gpt2.hf.config.save_pretrained(ckpt)
    gpt2.tokenizer.save_pretrained(ckpt)
    with pytest.raises(ModelLoadError) as e:
        load_model(str(ckpt), allow_pickle=True)
    assert "holds more than tensors; refused" in e.value.problem
    assert "weights_only=True" in e.value.cause and "mkdir" in e.value.cause
    assert not marker.exists()


# ---- 8. report: model and user text is shown as text -----------------------------------------------------
EVIL = "</script><script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">\"q\""


def _audit_result_with_text(evil: str):
    from analyses.audit import AuditResult

    behaviour = {
        "forget_accuracy": {"base": 1.0, "unlearned": 0.0},
        "unrelated_accuracy": {"base": 1.0, "unlearned": 1.0},
        "forget_logprob": {"base": -1.0, "unlearned": -9.0},
        "unrelated_logprob": {"base": -1.0, "unlearned": -1.0},
        "attacks": {},
    }
    vectors = {
        "vectors": [],
        "compare": [{"layer": 1, "neuron": 2, "cosine": 0.5, "jaccard": 0.5, "l2_change": 1.0}],
        "top_tokens": [{"layer": 1, "neuron": 2, "top_before": [[evil, 1.0]], "top_after": [[evil, 0.5]]}],
        "mean_cosine": 0.5,
        "mean_jaccard": 0.5,
    }
    lens = {
        "base": {"mean_logprob_by_layer": [-3.0, -1.0]},
        "unlearned": {"mean_logprob_by_layer": [-3.0, -5.0]},
        "unlearned_max_inner_top10_share": 0.0,
        "best_inner_layer": 0,
    }
    recovery = {
        "base": {"none": 1.0},
        "unlearned": {"none": 0.0},
        "unlearned_after_ablation": {"none": 0.0},
    }
    interventions = {
        "ablate_vectors": {"none": 0.0},
        "noise_vectors": {"forget_accuracy": 0.0, "noise_ratio": 1.0},
        "patch_vectors_from_base": {"forget_accuracy": 0.0, "unrelated_accuracy": 1.0},
    }
    ches = {  # QA text inside a plotly figure's hover text
        "retain": [[f"The capital of {evil} is", evil], ["The capital of France is", "Paris"]],
        "max_normalized_ches": [0.1, 0.2],
        "logprob_loss": [0.3, 0.4],
        "spearman": 1.0,
    }
    return AuditResult(
        evil, "removed", (evil,), behaviour, vectors, lens, recovery, interventions, {"ches": ches}
    )


def _concepts_page(evil: str) -> Page:
    from analyses.concept_vectors import ConceptReport, report_page

    validation = dict.fromkeys(
        [
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
        ],
        0.5,
    )
    validation.update(mode="ablate", n_vectors=1, beats_control=True, spares_unrelated=True)
    vec = {"layer": 1, "neuron": 2, "projection_score": 1.0, "effect_score": 1.0, "top_tokens": [evil]}
    return report_page(ConceptReport(evil, evil, (vec,), validation, 10))


def _answers_page(evil: str) -> Page:
    """The NIAH 'Answers' table of ``vestige heads`` (model generations), built the way heads_cmd builds it."""
    outcomes = [{"needle": evil, "answer": evil, "completion": evil, "rouge1_recall": 0.0, "correct": False}]
    return Page("answers").heading("Answers").table(pd.DataFrame(outcomes))


def test_concept_names_qa_text_and_generations_are_escaped():
    from analyses.audit import audit_report

    pages = [
        audit_report([_audit_result_with_text(EVIL)], labels=[EVIL]).render(),
        _concepts_page(EVIL).render(),
        _answers_page(EVIL).render(),
    ]
    for html in pages:
        assert "<script>document.title" not in html and "<img src=x" not in html
        assert "&lt;script&gt;document.title" in html or "\\u003cscript\\u003edocument.title" in html
    # the QA text inside the figure's JSON cannot close the script element it lives in
    assert "\\u003c\\u002fscript\\u003e\\u003cscript\\u003edocument.title" in pages[0]
    assert "&lt;/script&gt;&lt;script&gt;document.title" in pages[1] and "&lt;img src=x" in pages[2]


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_no_injected_element_in_headless_chromium(tmp_path):
    """Concept name, QA text (figure hover text), top tokens and generations with <script>, <img onerror>
    and quotes: Chromium's DOM holds no injected element and the title is untouched."""
    from analyses.audit import audit_report

    pages = {
        "audit": audit_report([_audit_result_with_text(EVIL)], labels=[EVIL]),
        "concepts": _concepts_page(EVIL),
        "answers": _answers_page(EVIL),
    }
    for name, page in pages.items():
        path = page.write(tmp_path / f"{name}.html")
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
        ]
        flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run(
            [_chromium(), *flags, "--virtual-time-budget=5000", "--dump-dom", path.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dom.returncode == 0, dom.stderr[-2000:]
        out = dom.stdout
        assert "pwned</title>" not in out, name
        assert "<img" not in out, name  # no element was injected
        assert out.count("<script") == (
            1 if name == "answers" else 1 + out.count('class="plotly-graph-div')
        ), name
        assert "&lt;img src=x onerror=" in out, name  # shown as text


# ---- 9. memory: chunked scan, OOM retry --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(gpt2):
    """A 2-layer gpt2 (d_mlp 128, full vocabulary): scans in milliseconds."""
    return _tiny_gpt2(gpt2.tokenizer)


def test_scan_result_does_not_depend_on_chunk(tiny):
    whole = C.scan(tiny, k=20, chunk=None)
    for chunk in (100, 7):
        part = C.scan(tiny, k=20, chunk=chunk)
        assert torch.equal(part.token_ids, whole.token_ids)
        assert torch.allclose(part.scores, whole.scores, rtol=0, atol=1e-5)


def test_scan_materializes_at_most_chunk_rows(tiny, monkeypatch):
    real_topk, shapes = torch.topk, []

    def topk(x, *a, **k):
        shapes.append(tuple(x.shape))
        return real_topk(x, *a, **k)

    monkeypatch.setattr(torch, "topk", topk)
    C.scan(tiny, [1], k=5, chunk=50)
    assert shapes and max(s[0] for s in shapes) <= 50 and all(s[1] == tiny.cfg.d_vocab for s in shapes)
    assert sum(s[0] for s in shapes) == tiny.cfg.d_mlp


def test_scan_by_default_holds_scan_floats_of_logits(tiny, monkeypatch):
    """The default chunk holds ``SCAN_FLOATS`` logits (here three vectors' worth) and scans as a whole
    layer does."""
    whole = C.scan(tiny, [1], k=5, chunk=None)
    real_topk, shapes = torch.topk, []

    def topk(x, *a, **k):
        shapes.append(tuple(x.shape))
        return real_topk(x, *a, **k)

    monkeypatch.setattr(C, "SCAN_FLOATS", 3 * tiny.cfg.d_vocab + 1)
    monkeypatch.setattr(torch, "topk", topk)
    part = C.scan(tiny, [1], k=5)
    assert max(s[0] for s in shapes) == 3 and sum(s[0] for s in shapes) == tiny.cfg.d_mlp
    assert torch.equal(part.token_ids, whole.token_ids)


def test_run_chunked_halves_on_out_of_memory():
    done: list[tuple[int, int]] = []

    def fn(start, stop):
        if stop - start > 12:
            raise OutOfMemoryError("CUDA out of memory (fake)")
        done.append((start, stop))

    with pytest.warns(RuntimeWarning) as caught:
        final = run_chunked(fn, 100, 64)
    assert [str(w.message) for w in caught] == [
        f"out of memory: retrying with chunks of {c}" for c in (32, 16, 8)
    ]
    assert final == 8
    assert [i for a, b in done for i in range(a, b)] == list(range(100))  # each item once, in order

    def never(start, stop):
        raise OutOfMemoryError("CUDA out of memory (fake)")

    with pytest.warns(RuntimeWarning), pytest.raises(OutOfMemoryError):
        run_chunked(never, 10, 4)


def test_scan_retries_with_smaller_chunks_on_oom(tiny, monkeypatch):
    expected = C.scan(tiny, [0, 1], k=10, chunk=20)
    real_topk, sizes = torch.topk, []

    def topk(x, *a, **k):
        if x.shape[0] > 20:
            raise OutOfMemoryError("CUDA out of memory (fake)")
        sizes.append(x.shape[0])
        return real_topk(x, *a, **k)

    monkeypatch.setattr(torch, "topk", topk)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        got = C.scan(tiny, [0, 1], k=10, chunk=None)
    assert torch.equal(got.token_ids, expected.token_ids) and torch.equal(got.scores, expected.scores)
    assert set(sizes) == {16, 128 - 7 * 16}  # 128 -> 64 -> 32 -> 16, then kept for the next layer


_MEMORY_SCRIPT = """
import json, re, sys
import torch
from probes.concepts import scan
from probes.model import load_model


def peak_kb():  # the process's peak resident set (VmHWM)
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))


torch.set_num_threads(1)
chunk = None if sys.argv[1] == "none" else int(sys.argv[1])
model = load_model("smollm2-135m", device="cpu")
with torch.no_grad():  # page the memory-mapped weights in before the baseline
    [float(p.sum()) for p in model.hf.parameters()]
with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current RSS (Linux >= 4.0)
    f.write("5")
before = peak_kb()
result = scan(model, [0, 29], k=50, chunk=chunk)
print(json.dumps({"peak_mb": (peak_kb() - before) / 1024, "checksum": float(result.scores.double().sum())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_scan_peak_memory_smollm2(tmp_path):
    """Peak RSS increase of a SmolLM2 scan, each chunk size in a fresh process: a whole layer materializes
    1536 x 49152 fp32 logits (288 MiB); chunks of 64 vectors, 12 MiB."""
    script = _write(tmp_path / "mem.py", _MEMORY_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    runs = {}
    for chunk in ("none", "64"):
        run = subprocess.run(
            [sys.executable, str(script), chunk],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        runs[chunk] = json.loads(run.stdout.strip().splitlines()[-1])
    print(
        f"scan peak RSS increase on SmolLM2: whole layer {runs['none']['peak_mb']:.0f} MiB, chunk 64 "
        f"{runs['64']['peak_mb']:.0f} MiB"
    )
    assert runs["none"]["checksum"] == runs["64"]["checksum"]
    assert runs["none"]["peak_mb"] > 200
    assert runs["64"]["peak_mb"] < 80


def test_a_cache_lock_makes_the_second_process_wait(tmp_path):
    """``probes.results.locked``: a process that asks for a lock another one holds waits until it is
    released (the GGUF and world caches are filled once when two test workers need them at once)."""
    from probes.results import locked

    lock, log = tmp_path / "entry.lock", tmp_path / "log"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from probes.results import locked\n"
            "with locked(sys.argv[1]):\n"
            "    open(sys.argv[2], 'a').write('child-start\\n')\n"
            "    time.sleep(1.0)\n"
            "    open(sys.argv[2], 'a').write('child-end\\n')\n",
            str(lock),
            str(log),
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        for _ in range(600):
            if log.exists() and log.read_text():
                break
            time.sleep(0.05)
        with locked(lock):
            with open(log, "a") as f:
                f.write("parent\n")
    finally:
        child.wait(timeout=60)
    assert log.read_text().split() == ["child-start", "child-end", "parent"]
