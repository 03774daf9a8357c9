"""Benchmark loaders (probes/benchmarks/): TOFU rows in its published schema (fixture files written in that
schema with invented authors) become Concepts that keep every field, from JSON lines, a JSON array and
parquet alike; bad files are refused naming the row; TOFU's metrics on SmolLM2 equal their definitions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from probes.benchmarks import (
    TOFU_SPLITS,
    load_muse_knowmem,
    load_muse_privleak,
    load_muse_verbmem,
    load_tofu,
    read_records,
    to_records,
)
from probes.benchmarks.tofu import tofu_metrics
from probes.errors import ConceptFileError

TOFU = Path(__file__).parent / "fixtures" / "tofu"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_tofu_split_becomes_a_concept_and_keeps_every_field():
    c = load_tofu(TOFU, "forget01_perturbed")
    rows = _lines(TOFU / "forget01_perturbed.json")
    assert c.concept == "TOFU forget01_perturbed" and len(c.qa) == len(rows) == 3
    for q, r in zip(c.qa, rows, strict=True):
        assert q.prompt == f"Question: {r['question']}\nAnswer:" and q.answer == r["answer"]
    assert to_records(c.qa) == rows  # paraphrased_question, paraphrased_answer, perturbed_answer included
    assert all(q.scoring == "rouge" for q in c.qa)  # sentence answers
    assert set(rows[0]) == {
        "question",
        "answer",
        "paraphrased_answer",
        "paraphrased_question",
        "perturbed_answer",
    }
    plain = load_tofu(TOFU / "forget01.json")  # the file itself
    assert to_records(plain.qa) == _lines(TOFU / "forget01.json") and plain.source.endswith("forget01.json")
    assert "forget01_perturbed" in TOFU_SPLITS and "retain90" in TOFU_SPLITS


def test_json_array_and_parquet_read_the_same_rows(tmp_path):
    rows = _lines(TOFU / "forget01_perturbed.json")
    (tmp_path / "forget01_perturbed.json").write_text(json.dumps(rows))  # a JSON array
    assert to_records(load_tofu(tmp_path, "forget01_perturbed").qa) == rows
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    hub = tmp_path / "hub" / "forget01_perturbed"  # the hub's parquet conversion: {split}/train-*.parquet
    hub.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(hub / "train-00000-of-00001.parquet")
    assert to_records(load_tofu(tmp_path / "hub", "forget01_perturbed").qa) == rows
    assert read_records(hub / "train-00000-of-00001.parquet") == rows


def test_bad_tofu_files_are_refused_naming_the_row(tmp_path):
    with pytest.raises(ConceptFileError, match="no TOFU split 'forget05'") as e:
        load_tofu(TOFU, "forget05")
    assert "forget01_perturbed" in str(e.value)  # what the folder holds
    bad = tmp_path / "forget01.json"
    bad.write_text('{"question": "Who?", "answer": "Me."}\n{"question": "What?"}\n')
    with pytest.raises(ConceptFileError, match=r"row 1 has no \['answer'\]"):
        load_tofu(bad)
    bad.write_text('{"question": "Who?", "answer": "Me."}\n{not json\n')
    with pytest.raises(ConceptFileError, match="line 2 is not JSON"):
        load_tofu(bad)
    bad.write_text('{"question": "Who?", "answer": "Me.", "perturbed_answer": "You."}\n')
    with pytest.raises(ConceptFileError, match="not a list of strings"):
        load_tofu(bad)
    bad.write_text("")
    with pytest.raises(ConceptFileError, match="holds no rows"):
        load_tofu(bad)
    with pytest.raises(ConceptFileError, match="only items from probes.benchmarks"):
        from probes.data import QA

        to_records([QA("a", "b")])


def test_tofu_metrics_on_smollm2_equal_their_definitions(smol):
    """Real authors: SmolLM2 prefers the true author to the perturbed ones (retain-side truth ratio > 0),
    and the probability is TOFU's normalised one; on the invented authors the numbers come from the same
    functions the definitions name."""
    from probes.freeform import free_form_scores, mean_answer_nll, truth_ratio_score, truth_ratios

    real = load_tofu(TOFU, "real_authors_perturbed")
    m = tofu_metrics(smol, real, forget=False)
    rows = to_records(real.qa)
    prompts = [q.prompt for q in real.qa]
    r = truth_ratios(
        smol, prompts, [row["answer"] for row in rows], [row["perturbed_answer"] for row in rows]
    )
    assert m["truth_ratio"] == pytest.approx(truth_ratio_score(r, forget=False)) and m["truth_ratio"] > 0.0
    true_p = [math.exp(-float(x)) for x in mean_answer_nll(smol, prompts, [row["answer"] for row in rows])]
    norm = []
    for p, t, row in zip(prompts, true_p, rows, strict=True):
        false = [math.exp(-float(x)) for x in mean_answer_nll(smol, [p] * 3, row["perturbed_answer"])]
        norm.append(t / (t + sum(false)))
    assert m["probability"] == pytest.approx(sum(norm) / len(norm), rel=1e-4)
    assert m["probability"] > 0.25  # above the 1-in-4 of an indifferent model
    assert m["rougeL_recall"] == pytest.approx(free_form_scores(smol, real.qa).rouge_l)

    forget = load_tofu(TOFU, "forget01_perturbed")
    f = tofu_metrics(smol, forget, forget=True)
    frows = to_records(forget.qa)
    fr = truth_ratios(
        smol,
        [q.prompt for q in forget.qa],
        [row["paraphrased_answer"] for row in frows],
        [row["perturbed_answer"] for row in frows],
    )
    assert f["truth_ratio"] == pytest.approx(truth_ratio_score(fr, forget=True))
    assert 0.0 < f["truth_ratio"] <= 1.0 and 0.0 < f["probability"] < 1.0 and f["n"] == 3
    assert tofu_metrics(smol, load_tofu(TOFU, "forget01"), forget=True)["truth_ratio"] is None


MUSE = Path(__file__).parent / "fixtures" / "muse"


def test_muse_knowmem_asks_after_the_in_context_examples_and_keeps_the_rows(tmp_path):
    c = load_muse_knowmem(MUSE, "forget_qa")
    rows = json.loads((MUSE / "knowmem" / "forget_qa.json").read_text())
    icl = json.loads((MUSE / "knowmem" / "forget_qa_icl.json").read_text())
    context = f"Question: {icl[0]['question']}\nAnswer: {icl[0]['answer']}\n\n"
    assert c.concept == "MUSE knowmem forget_qa" and to_records(c.qa) == rows
    for q, r in zip(c.qa, rows, strict=True):
        assert q.prompt == context + f"Question: {r['question']}\nAnswer:" and q.answer == r["answer"]
    assert (
        load_muse_knowmem(MUSE, "forget_qa", icl=False).qa[0].prompt
        == f"Question: {rows[0]['question']}\nAnswer:"
    )
    # retain_qa has no _icl file in the fixture: asked plainly
    assert load_muse_knowmem(MUSE, "retain_qa").qa[0].prompt.startswith("Question: What did the Lorne")
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    hub = tmp_path / "news" / "knowmem"  # the hub's layout: {config}/{split}-*.parquet
    hub.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(hub / "forget_qa-00000-of-00001.parquet")
    assert to_records(load_muse_knowmem(tmp_path / "news", "forget_qa").qa) == rows


def test_muse_verbmem_and_privleak():
    v = load_muse_verbmem(MUSE)
    row = json.loads((MUSE / "verbmem" / "forget.json").read_text())[0]
    assert v.qa[0].prompt == row["prompt"] and v.qa[0].answer == row["gt"] and to_records(v.qa) == [row]
    texts = load_muse_privleak(MUSE)
    assert set(texts) == {"forget", "retain", "holdout"} and len(texts["forget"]) == 2
    assert texts["holdout"] == json.loads((MUSE / "privleak" / "holdout.json").read_text())
    with pytest.raises(ConceptFileError, match="no MUSE split knowmem/holdout_qa") as e:
        load_muse_knowmem(MUSE, "holdout_qa")
    assert "forget_qa.json" in str(e.value)
    with pytest.raises(ConceptFileError, match="no MUSE 'raw' folder"):
        from probes.benchmarks.muse import muse_file

        muse_file(MUSE, "raw", "forget")


def test_the_floor_is_scored_by_the_forget_items_rule():
    from analyses.audit.runner import _scored_like
    from probes.data import load_floor

    floor = load_floor()
    assert all(q.scoring == "prefix" for q in floor.qa)
    tofu = load_tofu(TOFU, "forget01_perturbed")
    scored = _scored_like(floor, tofu)
    assert all(q.scoring == "rouge" for q in scored.qa)
    assert [(q.prompt, q.answer) for q in scored.qa] == [(q.prompt, q.answer) for q in floor.qa]
    from probes.data import load_concept

    hp = load_concept(name="Harry Potter")
    assert _scored_like(floor, hp) is floor  # prefix items: the floor as it is
