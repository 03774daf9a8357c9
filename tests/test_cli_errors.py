"""What a new user hits first: every subcommand answers a bad argument with problem / cause / fix (or
argparse's usage line) and exit code 2, never a traceback, and refuses it before any model loads; a concept
file without one of its optional fields either works or is refused up front with the fix (issue #22).

The unmarked cases run in-process through ``analyses.cli.main`` with the model loader replaced by one that
fails the test (a case that reaches the loader was not refused up front); the few that exercise the real
loader use paths that fail at once. The end-to-end runs on ``gpt2-seeded`` are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import analyses.cli
import analyses.cli.common
from probes.data import DEFAULT_CONCEPT_FILE

# A concept with every field; variants drop one optional field each.
FULL = {
    "concept": "Harry Potter",
    "qa": [
        {"prompt": "Harry Potter's best friend is Ron", "answer": "Weasley", "type": "surname"},
        {"prompt": "Harry Potter studied at the school called", "answer": "Hogwarts", "type": "place"},
    ],
    "text": ["Harry Potter is a boy wizard created by J. K. Rowling. He lives with his aunt and uncle."],
    "unrelated_qa": [{"prompt": "The capital of France is", "answer": "Paris", "type": "city"}],
}


def _without(field: str) -> dict:
    c = json.loads(json.dumps(FULL))
    if field == "type":
        for q in c["qa"] + c["unrelated_qa"]:
            q.pop("type")
    else:
        c.pop(field)
    return c


# Malformed concept files: (name, file content as text or bytes).
MALFORMED = {
    "not_json": "{not json",
    "top_level_string": json.dumps("just a string"),
    "list_of_numbers": json.dumps([1, 2]),
    "empty_list": "[]",
    "missing_qa": json.dumps({"concept": "X"}),
    "qa_not_a_list": json.dumps({"concept": "X", "qa": "Weasley"}),
    "qa_item_without_answer": json.dumps({"concept": "X", "qa": [{"prompt": "Ron"}]}),
    "empty_qa": json.dumps({"concept": "X", "qa": []}),
    "text_a_number": json.dumps({**FULL, "text": 5}),
    "text_of_objects": json.dumps({**FULL, "text": [{"a": 1}]}),
    "type_a_list": json.dumps({**FULL, "qa": [{"prompt": "Ron", "answer": "Weasley", "type": ["x"]}]}),
    "name_not_a_string": json.dumps({**FULL, "concept": 7}),
    "unrelated_qa_not_a_list": json.dumps({**FULL, "unrelated_qa": {"prompt": "a", "answer": "b"}}),
    "not_utf8": b"\xff\xfe{\x00}",
}

# Subcommands with a --concept-file, and the arguments that make each otherwise valid.
CONCEPT_COMMANDS = {
    "concepts": ["concepts"],
    "heads-memory": ["heads", "--kind", "memory"],
    "unlearn": ["unlearn", "--method", "ga"],
    "audit": ["audit", "--base", "x", "--unlearned", "y"],
}
# Those that pick one concept by --concept (heads --kind memory uses every concept of the file).
NAMED_CONCEPT_COMMANDS = {k: v for k, v in CONCEPT_COMMANDS.items() if k != "heads-memory"}


def _write(path: Path, content: str | bytes | dict | list) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def no_model(monkeypatch):
    """A model loader that fails the test: what is refused must be refused before any model loads. (The
    CLI's own checks in ``common.load``, such as ``--device``, still run.)"""
    import probes.model

    def load_model(spec, **kwargs):
        pytest.fail(f"a model was loaded ({spec!r}) although the input should have been refused first")

    monkeypatch.setattr(probes.model, "load_model", load_model)


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = analyses.cli.main(["--no-progress", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_refused(code: int, err: str, *, clear: bool) -> None:
    """Exit 2 without a traceback; ``clear``: a VestigeError, so the message has its cause or its fix
    (otherwise argparse's usage error, which names the argument)."""
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip(), "nothing said on stderr"
    if clear:
        assert "vestige: error:" in err and ("cause:" in err or "fix:" in err), err
    else:
        assert "usage:" in err and "error:" in err, err


# ---- typo'd option values and out-of-range numbers: argparse, before anything runs ---------------------
USAGE_CASES = {
    "info --dtype float33": ["info", "x", "--dtype", "float33"],
    "info --max-new-tokens -3": ["info", "x", "--max-new-tokens", "-3"],
    "info no model": ["info"],
    "info --concept (no such option)": ["info", "x", "--concept", "Harry Potter"],
    "concepts --mode ablat": ["concepts", "--mode", "ablat"],
    "concepts --n -3": ["concepts", "--n", "-3"],
    "concepts --n abc": ["concepts", "--n", "abc"],
    "concepts --dtype float33": ["concepts", "--dtype", "float33"],
    "heads --kind memroy": ["heads", "--kind", "memroy"],
    "heads no --kind": ["heads"],
    "heads retrieval --lengths abc": ["heads", "--kind", "retrieval", "--lengths", "abc"],
    "heads retrieval --lengths 0": ["heads", "--kind", "retrieval", "--lengths", "0"],
    "heads retrieval --depths 1.5": ["heads", "--kind", "retrieval", "--depths", "1.5"],
    "heads retrieval --mask-fraction x": ["heads", "--kind", "retrieval", "--mask-fraction", "x"],
    "heads retrieval --mask-modes zer": ["heads", "--kind", "retrieval", "--mask-modes", "zer"],
    "heads memory --method exakt": ["heads", "--kind", "memory", "--method", "exakt"],
    "heads memory --baseline zeros": ["heads", "--kind", "memory", "--baseline", "zeros"],
    "heads memory --k 0": ["heads", "--kind", "memory", "--k", "0"],
    "unlearn --method gaa": ["unlearn", "--method", "gaa"],
    "unlearn no --method": ["unlearn"],
    "unlearn --schedule cosine": ["unlearn", "--method", "ga", "--schedule", "cosine"],
    "unlearn --steps abc": ["unlearn", "--method", "ga", "--steps", "abc"],
    "unlearn --needle-mode ablat": ["unlearn", "--method", "needle", "--needle-mode", "ablat"],
    "unlearn --stop-fraction 2": ["unlearn", "--method", "ga", "--stop-fraction", "2"],
    "unlearn --dtype float33": ["unlearn", "--method", "ga", "--dtype", "float33"],
    "audit --n-vectors -3": ["audit", "--base", "x", "--unlearned", "y", "--n-vectors", "-3"],
    "audit --relearn-steps abc": ["audit", "--base", "x", "--unlearned", "y", "--relearn-steps", "abc"],
    "audit --dtype float33": ["audit", "--base", "x", "--unlearned", "y", "--dtype", "float33"],
    "audit --fact-relearn-params heads": [
        *("audit", "--base", "x", "--unlearned", "y", "--fact-relearn-params", "heads")
    ],
    "audit --soft-prompt-steps -1": ["audit", "--base", "x", "--unlearned", "y", "--soft-prompt-steps", "-1"],
    "audit --attacks reversed": ["audit", "--base", "x", "--unlearned", "y", "--attacks", "reversed"],
    "audit no --unlearned": ["audit", "--base", "x"],
    "audit --benchmark tofy": ["audit", "--base", "x", "--unlearned", "y", "--benchmark", "tofy"],
    "plan --dtype fp33": ["plan", "--model", "llama-3-8b", "--dtype", "fp33"],
    "plan --batch-size 0": ["plan", "--model", "llama-3-8b", "--batch-size", "0"],
    "plan --seq-len abc": ["plan", "--model", "llama-3-8b", "--seq-len", "abc"],
    "demo --model (no such option)": ["demo", "--model", "gpt2"],
    "bench --only typo": ["bench", "--only", "typo"],
    "bench --repeats 0": ["bench", "--repeats", "0"],
    "no subcommand": [],
    "subcommand typo": ["audti"],
}


@pytest.mark.parametrize("argv", list(USAGE_CASES.values()), ids=list(USAGE_CASES))
def test_typo_is_a_usage_error(argv, capsys, no_model):
    code, _, err = _run(capsys, argv)
    _assert_refused(code, err, clear=False)


# ---- bad --device and --out: problem / cause / fix before the model loads ------------------------------
DEVICE_COMMANDS = {
    "info": ["info", "gpt2-seeded"],
    "concepts": ["concepts", "--concept", "Harry Potter"],
    "heads-retrieval": ["heads", "--kind", "retrieval"],
    "heads-memory": ["heads", "--kind", "memory"],
    "unlearn": ["unlearn", "--method", "ga", "--concept", "Harry Potter"],
    "audit": ["audit", "--base", "x", "--unlearned", "y", "--concept", "Harry Potter"],
    "demo": ["demo"],
    "bench": ["bench", "--quick", "--only", "hook_overhead_resid_cache"],
}


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
@pytest.mark.parametrize("command", list(DEVICE_COMMANDS))
def test_bad_device_refused_before_loading(command, device, capsys, no_model, tmp_path):
    argv = DEVICE_COMMANDS[command] + ["--device", device]
    if command != "info":
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = _run(capsys, argv)
    _assert_refused(code, err, clear=True)
    assert device in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [c for c in DEVICE_COMMANDS if c != "info"])
def test_out_that_is_a_file_refused_before_loading(command, capsys, no_model, tmp_path):
    taken = _write(tmp_path / "taken", "a file")
    for out in (taken, taken / "below"):
        code, _, err = _run(capsys, DEVICE_COMMANDS[command] + ["--out", str(out)])
        _assert_refused(code, err, clear=True)
        assert str(taken) in err


# ---- missing files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(CONCEPT_COMMANDS))
def test_missing_concept_file(command, capsys, no_model, tmp_path):
    for path in ("/nonexistent.json", str(tmp_path)):  # nothing there; a directory
        code, _, err = _run(capsys, CONCEPT_COMMANDS[command] + ["--concept-file", path])
        _assert_refused(code, err, clear=True)
        assert path in err


MISSING_INPUT = {
    "heads --haystack": ["heads", "--kind", "retrieval", "--haystack", "/nonexistent.txt"],
    "heads --needles": ["heads", "--kind", "retrieval", "--needles", "/nonexistent.json"],
}


@pytest.mark.parametrize("argv", list(MISSING_INPUT.values()), ids=list(MISSING_INPUT))
def test_missing_heads_input_refused_before_loading(argv, capsys, no_model):
    code, _, err = _run(capsys, argv)
    _assert_refused(code, err, clear=True)
    assert "/nonexistent" in err


@pytest.mark.parametrize(
    "content",
    ["[not json", json.dumps({"needle": "x"}), json.dumps([{"needle": "x"}]), b"\xff\xfe"],
    ids=["not_json", "object", "item_without_answer", "not_utf8"],
)
def test_malformed_needles_refused_before_loading(content, capsys, no_model, tmp_path):
    path = _write(tmp_path / "needles.json", content)
    code, _, err = _run(capsys, ["heads", "--kind", "retrieval", "--needles", str(path)])
    _assert_refused(code, err, clear=True)


TOFU_FIXTURES = Path(__file__).parent / "fixtures" / "tofu"
BENCHMARK_REFUSED = {
    "--benchmark without --data": (["--benchmark", "tofu"], "needs --data"),
    "--data without --benchmark": (["--data", str(TOFU_FIXTURES)], "no --benchmark was given"),
    "a split the folder lacks": (
        ["--benchmark", "tofu", "--data", str(TOFU_FIXTURES), "--split", "forget05"],
        "no TOFU split 'forget05'",
    ),
    "a folder that is not there": (["--benchmark", "muse-knowmem", "--data", "/nonexistent"], "/nonexistent"),
}


@pytest.mark.parametrize(("extra", "said"), list(BENCHMARK_REFUSED.values()), ids=list(BENCHMARK_REFUSED))
def test_bad_benchmark_arguments_refused_before_loading(extra, said, capsys, no_model):
    code, _, err = _run(capsys, ["audit", "--base", "x", "--unlearned", "y", *extra])
    _assert_refused(code, err, clear=True)
    assert said in err


def test_audit_reads_a_tofu_forget_split_with_its_retain_items_as_control(capsys, monkeypatch):
    import analyses.audit as audit_mod

    seen = {}

    def audit(base, unlearned, concept, **kwargs):
        seen.update(concept=concept, control=kwargs["control_qa"])
        raise _Reached

    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: spec)
    monkeypatch.setattr("probes.qa.validate_concept", lambda model, concept: concept)
    monkeypatch.setattr(audit_mod, "audit", audit)
    argv = ["audit", "--base", "b", "--unlearned", "u", "--benchmark", "tofu", "--data", str(TOFU_FIXTURES)]
    with pytest.raises(_Reached):
        analyses.cli.main(["--no-progress", *argv, "--split", "forget01_perturbed"])
    concept, control = seen["concept"], seen["control"]
    assert concept.concept == "TOFU forget01_perturbed" and len(concept.qa) == 3
    assert all(q.scoring == "rouge" for q in concept.qa)
    retain = [q.prompt for q in control[:2]]  # retain_perturbed first, then the bundled file's facts
    assert retain[0].startswith("Question: What instrument does the composer Tavio Renhalt play?")
    assert len(control) > 2


MISSING_MODEL = {
    "info": ["info", "{model}"],
    "concepts": ["concepts", "--concept", "Harry Potter", "--model", "{model}"],
    "heads-retrieval": ["heads", "--kind", "retrieval", "--model", "{model}"],
    "heads-memory": ["heads", "--kind", "memory", "--model", "{model}"],
    "unlearn": ["unlearn", "--method", "ga", "--concept", "Harry Potter", "--model", "{model}"],
    "audit-base": ["audit", "--base", "{model}", "--unlearned", "gpt2-seeded", "--concept", "Harry Potter"],
    "bench": ["bench", "--quick", "--only", "hook_overhead_resid_cache", "--model", "{model}"],
}


@pytest.mark.parametrize("model", ["/nonexistent/model", "/nonexistent/model.gguf", "no-such-model"])
@pytest.mark.parametrize("command", list(MISSING_MODEL))
def test_model_that_does_not_exist(command, model, capsys, tmp_path):
    """The real loader: a path that is not there (or an unknown spec) is refused at once."""
    argv = [a.format(model=model) for a in MISSING_MODEL[command]]
    if command != "info":
        argv += ["--out", str(tmp_path / "out")]
    code, _, err = _run(capsys, argv)
    _assert_refused(code, err, clear=True)
    assert model in err


def test_model_directory_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, ["info", str(tmp_path / "empty")])
    _assert_refused(code, err, clear=True)
    assert "config.json" in err


# ---- wrong concept names and malformed concept files --------------------------------------------------
@pytest.mark.parametrize("command", list(NAMED_CONCEPT_COMMANDS))
def test_wrong_concept_name(command, capsys, no_model):
    code, _, err = _run(capsys, NAMED_CONCEPT_COMMANDS[command] + ["--concept", "No Such Concept"])
    _assert_refused(code, err, clear=True)
    assert "No Such Concept" in err and "Harry Potter" in err  # the names the file does have


@pytest.mark.parametrize("command", list(NAMED_CONCEPT_COMMANDS))
def test_no_concept_name_with_a_file_of_many(command, capsys, no_model):
    code, _, err = _run(capsys, NAMED_CONCEPT_COMMANDS[command])
    _assert_refused(code, err, clear=True)
    assert "--concept" in err and str(DEFAULT_CONCEPT_FILE) in err


@pytest.mark.parametrize("bad", list(MALFORMED))
@pytest.mark.parametrize("command", list(CONCEPT_COMMANDS))
def test_malformed_concept_file(command, bad, capsys, no_model, tmp_path):
    path = _write(tmp_path / "c.json", MALFORMED[bad])
    code, _, err = _run(capsys, CONCEPT_COMMANDS[command] + ["--concept-file", str(path)])
    _assert_refused(code, err, clear=True)
    assert str(path) in err


# ---- concept files without an optional field ---------------------------------------------------------
OPTIONAL = ("text", "unrelated_qa", "type")


@pytest.mark.parametrize("field", OPTIONAL)
def test_concept_file_without_an_optional_field_loads(field, tmp_path):
    from probes.data import load_concept

    c = load_concept(_write(tmp_path / "c.json", _without(field)))
    assert c.concept == "Harry Potter" and len(c.qa) == 2
    if field == "text":
        assert c.text == ()
    elif field == "unrelated_qa":
        assert c.unrelated_qa == ()
    else:
        assert all(q.type is None for q in c.qa)


class _Reached(Exception):
    """Raised by a stub where the real command would start its work: the input was accepted."""


@pytest.mark.parametrize("method", ["gd", "npo_kl", "rmu"])
def test_unlearn_retain_method_without_retain_data_refused_up_front(method, capsys, no_model, tmp_path):
    """One concept, no unrelated_qa, no other concept with text: nothing to retain on."""
    path = _write(tmp_path / "c.json", _without("unrelated_qa"))
    code, _, err = _run(capsys, ["unlearn", "--method", method, "--concept-file", str(path)])
    _assert_refused(code, err, clear=True)
    assert "unrelated_qa" in err and "fix:" in err


def test_unlearn_no_retain_text_refused_when_it_leaves_nothing(capsys, no_model, tmp_path):
    other = {"concept": "Paris", "qa": [{"prompt": "Paris is in", "answer": "France"}], "text": ["Paris."]}
    path = _write(tmp_path / "c.json", [_without("unrelated_qa"), other])
    argv = ["unlearn", "--method", "gd", "--concept-file", str(path), "--concept", "Harry Potter"]
    code, _, err = _run(capsys, argv + ["--no-retain-text"])
    _assert_refused(code, err, clear=True)
    assert "--no-retain-text" in err


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("ga", "text"),
        ("ga", "unrelated_qa"),
        ("ga", "type"),
        ("npo", "text"),
        ("needle", "unrelated_qa"),
        ("gd", "text"),  # retains on unrelated_qa
        ("rmu", "text"),
    ],
)
def test_unlearn_without_an_optional_field_starts(method, field, capsys, monkeypatch, tmp_path):
    """Not refused: the run starts (stubbed here; the real runs are the slow test below)."""
    import analyses.cli.unlearn as cli_unlearn

    def fake_unlearn(model, concept, cfg, *, retain_texts, retain_qa, progress):
        assert model == "model" and cfg.method == method
        raise _Reached

    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: "model")
    monkeypatch.setattr(cli_unlearn, "unlearn", fake_unlearn)
    path = _write(tmp_path / "c.json", _without(field))
    with pytest.raises(_Reached):
        analyses.cli.main(["--no-progress", "unlearn", "--method", method, "--concept-file", str(path)])
    if field == "text" and method != "needle":
        assert "trains on its 2 QA items only" in capsys.readouterr().err


@pytest.mark.parametrize("field", OPTIONAL)
def test_audit_without_an_optional_field_starts(field, monkeypatch, tmp_path):
    import analyses.audit as audit_mod
    import probes.qa

    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: spec)
    monkeypatch.setattr(probes.qa, "validate_concept", lambda model, concept: concept)
    monkeypatch.setattr(audit_mod, "audit", lambda *a, **k: (_ for _ in ()).throw(_Reached()))
    path = _write(tmp_path / "c.json", _without(field))
    with pytest.raises(_Reached):
        analyses.cli.main(
            ["--no-progress", "audit", "--base", "b", "--unlearned", "u", "--concept-file", str(path)]
        )


def test_concepts_without_unrelated_qa_prints_na(capsys, monkeypatch, tmp_path):
    """Without unrelated_qa the unrelated drop is not measured (None in the report): the summary line says
    n/a instead of failing on the format."""
    import analyses.concept_vectors as cv

    validation = {"target_drop": 1.5, "unrelated_drop": None, "control_target_drop": float("nan")}
    report = type("R", (), {"vectors": (), "validation": validation})()
    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: "model")
    monkeypatch.setattr(cv, "run_concept", lambda model, concept, **k: report)
    monkeypatch.setattr(cv, "write_outputs", lambda report, out: (f"{out}/concepts.json", f"{out}/r.html"))
    path = _write(tmp_path / "c.json", _without("unrelated_qa"))
    code, out, err = _run(capsys, ["concepts", "--concept-file", str(path), "--out", str(tmp_path / "o")])
    assert code == 0, err
    assert "target drop 1.500" in out and "unrelated drop n/a" in out and "control drop n/a" in out
    assert "no unrelated_qa" in out


# ---- the console script itself -----------------------------------------------------------------------
def _console_script() -> Path:
    script = Path(sys.executable).with_name("vestige")
    if not script.exists():
        pytest.skip("the vestige console script is not installed in this environment")
    return script


@pytest.mark.parametrize(
    ("argv", "clear"),
    [
        (["unlearn", "--method", "gd", "--concept-file", "{tmp}/c.json"], True),
        (["heads", "--kind", "retrieval", "--needles", "/nonexistent.json"], True),
        (["concepts", "--mode", "ablat"], False),
    ],
    ids=["unlearn-no-retain-data", "heads-missing-needles", "concepts-typo"],
)
def test_console_script_prints_no_traceback(argv, clear, tmp_path):
    _write(tmp_path / "c.json", _without("unrelated_qa"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [str(_console_script()), *(a.format(tmp=tmp_path) for a in argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    _assert_refused(p.returncode, p.stderr, clear=clear)
    assert p.stdout == ""


# ---- end to end on gpt2-seeded: each optional field missing, the command completes ---------------------
@pytest.mark.slow
@pytest.mark.parametrize("field", ["all"])  # every optional field dropped; each alone: the stubbed tests
def test_concepts_end_to_end_without_optional_fields(field, gpt2, capsys, monkeypatch, tmp_path):
    concept = _without(field) if field != "all" else _bare()
    path = _write(tmp_path / "c.json", concept)
    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: gpt2)
    code, out, err = _run(
        capsys, ["concepts", "--concept-file", str(path), "--n", "2", "--out", str(tmp_path)]
    )
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "concepts.json").exists()


def _bare() -> dict:
    c = _without("text")
    c.pop("unrelated_qa")
    for q in c["qa"]:
        q.pop("type")
    return c


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "field"),
    # one run per kind of data a method reads (the stubbed tests above cover every method x field)
    [("ga", "all"), ("dpo_idk", "all"), ("needle", "all"), ("rmu", "text")],
)
def test_unlearn_end_to_end_without_optional_fields(method, field, gpt2, capsys, monkeypatch, tmp_path):
    concept = _without(field) if field != "all" else _bare()
    path = _write(tmp_path / "c.json", concept)
    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: gpt2)
    code, out, err = _run(
        capsys, ["unlearn", "--method", method, "--concept-file", str(path), "--steps", "1", "--json"]
    )
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out)["method"] == method


@pytest.mark.slow
@pytest.mark.parametrize("field", ["all"])  # every optional field dropped
def test_audit_end_to_end_without_optional_fields(field, gpt2, capsys, monkeypatch, tmp_path):
    """Without usable text the relearning attack is skipped (with a note), not a crash."""
    concept = _without(field) if field != "all" else _bare()
    path = _write(tmp_path / "c.json", concept)
    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: gpt2)
    argv = ["audit", "--base", "b", "--unlearned", "u", "--concept-file", str(path), "--out", str(tmp_path)]
    # the seeded gpt2 knows nothing: the flag keeps the relearning attack the audit would otherwise skip
    flags = [
        "--quick",
        "--n-vectors",
        "2",
        "--relearn-steps",
        "1",
        "--attack-when-nothing-to-forget",
        "--json",
    ]
    code, out, err = _run(capsys, argv + flags)
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "report.html").exists()
    report = json.loads((tmp_path / "audit.json").read_text())
    notes = report["notes"]
    assert any("relearning attack skipped" in n for n in notes), notes
    assert report["config"]["attack_when_nothing_to_forget"] is True
