"""Benchmark loaders for RWKU, WMDP and ConceptVectors (probes/benchmarks/), fixture files written in each
release's published schema and layout with invented content: every field round-trips through
``QA.record``, splits and targets are selected as documented, missing files / splits / targets are refused
naming what is there; WMDP's multiple-choice scoring equals single HF forwards on SmolLM2; a ``datasets``
``save_to_disk`` folder, an Arrow file and a hub-cache snapshot folder read like the JSON files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import analyses.cli
from probes.benchmarks import (
    BENCHMARKS,
    DEFAULT_SPLITS,
    RWKU_SPLITS,
    WMDP_SPLITS,
    concept_vector,
    conceptvectors_model,
    load_benchmark,
    load_conceptvectors,
    load_conceptvectors_all,
    load_rwku,
    load_wmdp,
    load_wmdp_corpus,
    read_records,
    rwku_targets,
    to_records,
)
from probes.benchmarks.files import find_split, local_root
from probes.benchmarks.rwku import parse_rwku_split
from probes.data import QA
from probes.errors import ConceptFileError
from probes.qa import choice_scores, is_correct, option_logprobs, score_qa

FIXTURES = Path(__file__).parent / "fixtures"
RWKU = FIXTURES / "rwku"
WMDP = FIXTURES / "wmdp"
CV = FIXTURES / "conceptvectors"
MARISOL = "Marisol Venn"


def _json(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- RWKU ------------------------------------------------------------------------------------------------


def test_rwku_target_probes_keep_every_field_and_rwku_prompts():
    c = load_rwku(RWKU, "forget", MARISOL)
    rows = [r for s in RWKU_SPLITS[:3] for r in _json(RWKU / "All" / f"{s}.json") if r["subject"] == MARISOL]
    assert c.concept == "RWKU Marisol Venn forget" and len(c.qa) == len(rows) == 7
    assert to_records(c.qa) == rows  # query, answer, level, type, subject: as read
    assert set(rows[0]) == {"query", "answer", "level", "type", "subject"}
    assert all(q.scoring == "rouge" and q.answer == r["answer"] for q, r in zip(c.qa, rows, strict=True))
    assert c.source.endswith("Target/1_Marisol_Venn/forget_level1.json")  # the target's own folder
    prompts = {r["type"]: q.prompt for q, r in zip(c.qa, rows, strict=True)}
    q1, q2 = rows[0]["query"], rows[2]["query"]
    assert c.qa[0].prompt == f"Please complete the blank in the following question.\nQuestion: {q1}\nAnswer:"
    assert c.qa[2].prompt == f"Please briefly answer the following question.\nQuestion: {q2}\nAnswer:"
    suffix = next(r["query"] for r in rows if r["type"] == "affirmative suffix")
    assert (
        prompts["affirmative suffix"] == f"Please briefly answer the following question.\nQuestion: {suffix}"
    )
    icl = next(r["query"] for r in rows if r["type"] == "incontext learning")
    assert prompts["incontext learning"] == f"Please briefly answer the following question.\n{icl}\nAnswer:"
    assert prompts["prefix injection"].endswith("\nAnswer:")
    # the same probes from the All/ files (filtered by subject) and from the target's folder alone
    assert to_records(load_rwku(RWKU / "All", "forget", MARISOL).qa) == rows
    folder = load_rwku(RWKU / "Target" / "1_Marisol_Venn", "forget")
    assert folder.concept == "RWKU forget" and to_records(folder.qa) == rows
    assert load_rwku(RWKU, "forget", "marisol venn").qa == c.qa  # names match case-insensitively
    # a chat template wraps the instruction, and the answer tag follows it, as RWKU's eval does
    chat = load_rwku(RWKU, "forget_level1", MARISOL, chat=lambda s: f"<user>{s}</user>")
    assert (
        chat.qa[0].prompt
        == f"<user>Please complete the blank in the following question.\nQuestion: {q1}\n</user>Answer:"
    )


def test_rwku_split_selection_and_split_strings():
    assert parse_rwku_split("forget_level2") == (None, "forget_level2")
    assert parse_rwku_split("Stephen King/forget_level3") == ("Stephen King", "forget_level3")
    assert parse_rwku_split("Prince Harry, Duke of Sussex/neighbor") == (
        "Prince Harry, Duke of Sussex",
        "neighbor",
    )
    assert parse_rwku_split("Stephen King") == ("Stephen King", "forget")
    level2 = load_rwku(RWKU, "Marisol Venn/forget_level2")
    assert [r["level"] for r in to_records(level2.qa)] == ["2", "2"] and level2.concept.endswith(
        "forget_level2"
    )
    neighbours = load_rwku(RWKU, "neighbor", MARISOL)
    expected = [
        r for s in RWKU_SPLITS[3:] for r in _json(RWKU / "All" / f"{s}.json") if r["subject"] == MARISOL
    ]
    assert to_records(neighbours.qa) == expected and all("neighbor" in r for r in expected)
    everyone = load_rwku(RWKU, "forget_level1")  # no target: every target's rows, from All/
    assert to_records(everyone.qa) == _json(RWKU / "All" / "forget_level1.json")
    assert rwku_targets(RWKU) == [MARISOL, "Tobias Wrenfield"]  # from Target/ folder names
    assert rwku_targets(RWKU / "All") == [MARISOL, "Tobias Wrenfield"]  # from intro.json


def test_rwku_refuses_unknown_splits_targets_and_missing_files(tmp_path):
    with pytest.raises(ConceptFileError, match="unknown RWKU split 'forget_level4'") as e:
        load_rwku(RWKU, "forget_level4", MARISOL)
    assert "neighbor_level2" in str(e.value)
    for source in (RWKU, RWKU / "All"):  # via the Target/ folders and via the subjects of All/
        with pytest.raises(ConceptFileError, match="no RWKU target 'Ada Lovelace'") as e:
            load_rwku(source, "Ada Lovelace/forget")
        assert "'Marisol Venn', 'Tobias Wrenfield'" in str(e.value)
    with pytest.raises(ConceptFileError, match="does not exist"):
        load_rwku(tmp_path / "nowhere", "forget")
    shutil.copy(RWKU / "All" / "forget_level1.json", tmp_path / "forget_level1.json")
    with pytest.raises(ConceptFileError, match="no RWKU probe set 'forget_level2'") as e:
        load_rwku(tmp_path, "forget")
    assert "forget_level1.json" in str(e.value)
    bad = tmp_path / "forget_level2.json"
    bad.write_text(json.dumps([{"query": "Who?", "level": "2", "subject": MARISOL}]))
    with pytest.raises(ConceptFileError, match=r"row 0 has no \['answer'\]"):
        load_rwku(bad, "forget_level2")
    # one file holds one probe set: its name says which (the default "forget" reads it once), or the split
    one = RWKU / "All" / "forget_level1.json"
    assert to_records(load_rwku(one).qa) == _json(one) and load_rwku(one).concept == "RWKU forget_level1"
    with pytest.raises(ConceptFileError, match="holds RWKU's forget_level1, not forget_level2"):
        load_rwku(one, "forget_level2")
    unnamed = tmp_path / "test-00000-of-00001.json"
    shutil.copy(one, unnamed)
    with pytest.raises(ConceptFileError, match="which RWKU probe set does"):
        load_rwku(unnamed)
    assert load_rwku(unnamed, "Marisol Venn/forget_level1").qa == load_rwku(one, "forget_level1", MARISOL).qa


# ---- WMDP ------------------------------------------------------------------------------------------------


def test_wmdp_rows_become_choice_items_in_lm_eval_format(tmp_path):
    c = load_wmdp(WMDP)
    rows = _lines(WMDP / "wmdp-bio.jsonl")
    assert c.concept == "WMDP wmdp-bio" and to_records(c.qa) == rows and c.text == ()
    first = rows[0]
    assert c.qa[0].prompt == (
        "The following are multiple choice questions (with answers) about biology.\n\n"
        f"{first['question']}\nA. {first['choices'][0]}\nB. {first['choices'][1]}\nC. {first['choices'][2]}\n"
        f"D. {first['choices'][3]}\nAnswer:"
    )
    assert [q.answer for q in c.qa] == ["ABCD"[r["answer"]] for r in rows]
    assert all(q.scoring == "choice" for q in c.qa)
    plain = load_wmdp(WMDP, "wmdp-cyber", description=False)
    assert plain.qa[0].prompt.startswith(_lines(WMDP / "wmdp-cyber.jsonl")[0]["question"])
    assert "about chemistry." in load_wmdp(WMDP, "wmdp-chem").qa[0].prompt
    cyber = load_wmdp(WMDP / "wmdp-cyber.jsonl")  # a file's name says its configuration
    assert cyber.concept == "WMDP wmdp-cyber" and "about cybersecurity." in cyber.qa[0].prompt
    assert load_benchmark("wmdp", WMDP / "wmdp-cyber.jsonl")[0].qa == cyber.qa
    with pytest.raises(ConceptFileError, match="holds WMDP's wmdp-cyber, not wmdp-bio"):
        load_wmdp(WMDP / "wmdp-cyber.jsonl", "wmdp-bio")
    assert set(WMDP_SPLITS) == {"wmdp-bio", "wmdp-chem", "wmdp-cyber"}
    corpus = _lines(WMDP / "corpora" / "bio-forget-corpus.jsonl")
    with_text = load_wmdp(WMDP, corpus=WMDP / "corpora")  # the forget corpus becomes the concept's text
    assert with_text.text == tuple(r["text"] for r in corpus)
    # corpora as the hub has them ({config}/train-*.parquet of `text`), and as JSON strings per line
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    (tmp_path / "cyber-forget-corpus").mkdir()
    pd.DataFrame({"text": ["a note on ports", "a note on keys"]}).to_parquet(
        tmp_path / "cyber-forget-corpus" / "train-00000-of-00001.parquet"
    )
    assert load_wmdp_corpus(tmp_path, "cyber-forget-corpus") == ["a note on ports", "a note on keys"]
    (tmp_path / "cyber-retain-corpus.jsonl").write_text('"first text"\n"second text"\n')
    assert load_wmdp_corpus(tmp_path, "cyber-retain-corpus") == ["first text", "second text"]
    with pytest.raises(ConceptFileError, match="no WMDP corpus 'bio-retain-corpus'"):
        load_wmdp_corpus(tmp_path, "bio-retain-corpus")


def test_wmdp_bad_rows_and_missing_configurations_are_refused(tmp_path):
    with pytest.raises(ConceptFileError, match="no WMDP configuration 'wmdp-physics'") as e:
        load_wmdp(WMDP, "wmdp-physics")
    assert "wmdp-bio.jsonl" in str(e.value) and "wmdp-cyber" in str(e.value)
    bad = tmp_path / "wmdp-bio.jsonl"
    row = {"question": "Which is a fruit?", "choices": ["Apple", "Stone"], "answer": 2}
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(ConceptFileError, match="row 0: 'answer' is not the index of one of its 2 choices"):
        load_wmdp(bad)
    bad.write_text(json.dumps({**row, "choices": "Apple or Stone", "answer": 0}) + "\n")
    with pytest.raises(ConceptFileError, match="'choices' is not a list"):
        load_wmdp(bad)
    bad.write_text(json.dumps({**row, "answer": True}) + "\n")
    with pytest.raises(ConceptFileError, match="'answer' is not the index"):
        load_wmdp(bad)


def test_choice_items_need_their_choices_and_read_sampled_letters():
    record = {"question": "q", "choices": ["x", "y", "z"], "answer": 1}
    assert QA("p", "B", scoring="choice", record=record).answer == "B"
    with pytest.raises(ValueError, match="it is one of \\('A', 'B', 'C'\\)"):
        QA("p", "D", scoring="choice", record=record)
    with pytest.raises(ValueError, match="record\\['choices'\\]"):
        QA("p", "A", scoring="choice")
    assert (
        is_correct(" B", "B", "choice")
        and is_correct("B. y", "B", "choice")
        and is_correct("B)", "B", "choice")
    )
    assert not is_correct(" Because", "B", "choice") and not is_correct(" A", "B", "choice")
    with pytest.raises(ConceptFileError, match="not as a multiple-choice item"):
        choice_scores(None, [QA("p", "a")])


def _last_logprobs(model, text: str) -> torch.Tensor:
    ids = model.tokenizer(text)["input_ids"]
    with torch.no_grad():
        return torch.log_softmax(model.hf(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def test_choice_scores_equal_single_hf_forwards(smol):
    """lm-eval-harness's acc by hand: one HF forward per prompt, the log-probability of " A" ... " D" at
    its last position; the item is correct when the right letter's is the largest."""
    items = load_wmdp(WMDP).qa[:2]
    prefix = "Quiz.\n"
    cs = choice_scores(smol, items, prefix=prefix)  # one left-padded batch of unequal prompts
    letters = [smol.tokenizer(" " + x, add_special_tokens=False)["input_ids"] for x in "ABCD"]
    assert all(len(t) == 1 for t in letters)
    for q, got, chosen in zip(items, cs.logprobs, cs.chosen, strict=True):
        lp = _last_logprobs(smol, prefix + q.prompt)
        want = [float(lp[t[0]]) for t in letters]
        assert got == pytest.approx(want, abs=1e-3)
        assert chosen == max(range(4), key=want.__getitem__)
    assert cs.answer_index == tuple("ABCD".index(q.answer) for q in items)
    assert cs.accuracy == sum(cs.correct) / 2
    assert list(cs.to_frame()["chosen"]) == ["ABCD"[c] for c in cs.chosen]
    # score_qa scores choice items by the same rule (their log-probability: the right letter's), beside a
    # prefix-scored item
    fact = QA("The capital of France is", "Paris")
    s = score_qa(smol, [*items, fact], prefix=prefix)
    assert s.correct[:2] == cs.correct
    assert s.logprobs[:2] == pytest.approx([lp[a] for lp, a in zip(cs.logprobs, cs.answer_index)], abs=1e-4)
    assert s.correct[2] and s.logprobs[2] < 0
    # options of several tokens: each summed over its tokens under teacher forcing
    prompts = ["The capital of France is", "Water freezes at"]
    options = [["Paris", "New York"], ["zero degrees", "ten"]]
    for p, opts, got in zip(prompts, options, option_logprobs(smol, prompts, options), strict=True):
        for o, value in zip(opts, got, strict=True):
            ids = smol.tokenizer(p)["input_ids"]
            a = smol.tokenizer(" " + o, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(smol.hf(input_ids=torch.tensor([ids + a])).logits[0].float(), -1)
            want = sum(float(logp[len(ids) - 1 + k, a[k]]) for k in range(len(a)))
            assert value == pytest.approx(want, abs=1e-3)


# ---- ConceptVectors --------------------------------------------------------------------------------------


def test_conceptvectors_concepts_keep_their_vector_and_items():
    rows = _json(CV / "ConceptVectors_data" / "llama2-7b_concepts_dev.json")
    c = load_conceptvectors(CV, "zephyria", file="llama2-7b_concepts_dev")
    row = rows[0]
    assert c.concept == "Zephyria" and c.text == (row["wikipedia_content"],) and c.unrelated_qa == ()
    assert [q.prompt for q in c.qa] == [
        f"Please complete the following paragraph: {t['First_half']}" for t in row["text_completion"]
    ]
    assert [q.answer for q in c.qa] == [t["Second_half"] for t in row["text_completion"]]
    assert all(q.scoring == "rouge" for q in c.qa)
    assert to_records(c.qa) == [
        {"Concept": "Zephyria", "Layer": 20, "Dim": 4711, "id": 7, "text_completion": t, "index": j}
        for j, t in enumerate(row["text_completion"])
    ]
    assert concept_vector(CV, "Zephyria", file="llama2-7b_concepts_dev") == (20, 4711)
    olmo = CV / "ConceptVectors_data" / "olmo-7b_concepts_dev.json"
    assert concept_vector(olmo) == (24, 1138)  # the file's only concept
    assert to_records(load_conceptvectors(olmo).qa)[0]["ID"] == 3  # OLMo's files spell it ID
    assert conceptvectors_model(olmo) == "allenai/OLMo-7B"
    assert conceptvectors_model("llama2-7b_concepts_test.json") == "meta-llama/Llama-2-7b-chat-hf"
    every = load_conceptvectors_all(CV, file="llama2-7b_concepts_dev.json")
    assert [x.concept for x in every] == [r["Concept"] for r in rows]
    assert "id" not in to_records(every[1].qa)[0]  # the release leaves id out of some rows


def test_conceptvectors_questions_take_the_reference_models_answers(smol):
    """The reference's greedy answers, cut at the first blank line, become the questions' answers; SmolLM2
    ends its turn at once on the invented country's question, and that question is left out."""
    olmo = CV / "ConceptVectors_data" / "olmo-7b_concepts_dev.json"
    c = load_conceptvectors(olmo, reference=smol, max_new_tokens=4)
    row = _json(olmo)[0]
    prompts = [f"Question: {q}\n Answer:" for q in (*row["QA"], *row["unrelated_QA"])]
    raw = smol.generate(prompts, 4)
    assert raw[0] == "" and raw[1].startswith("\n\n") and raw[1].strip()
    assert [q.prompt for q in c.qa] == [
        f"Please complete the following paragraph: {row['text_completion'][0]['First_half']}"
    ]
    assert [(q.prompt, q.answer) for q in c.unrelated_qa] == [(prompts[1], raw[1].strip().split("\n\n")[0])]
    assert to_records(c.unrelated_qa) == [
        {
            "Concept": "Zephyria",
            "Layer": 24,
            "Dim": 1138,
            "ID": 3,
            "unrelated_QA": row["unrelated_QA"][0],
            "index": 0,
        }
    ]


def test_conceptvectors_refuses_ambiguous_or_unknown_names(tmp_path):
    with pytest.raises(ConceptFileError, match="which file of") as e:
        load_conceptvectors(CV, "Zephyria")
    assert "llama2-7b_concepts_dev" in str(e.value) and "olmo-7b_concepts_dev" in str(e.value)
    with pytest.raises(ConceptFileError, match="holds 2 concepts; which one") as e:
        load_conceptvectors(CV, file="llama2-7b_concepts_dev")
    with pytest.raises(ConceptFileError, match="no concept named 'Atlantis'") as e:
        concept_vector(CV, "Atlantis", file="llama2-7b_concepts_dev")
    assert "'Zephyria', 'Glassfin trout'" in str(e.value)
    bad = tmp_path / "llama2-7b_concepts.json"
    bad.write_text(json.dumps([{"Concept": "X", "Layer": "20", "Dim": 1, "QA": []}]))
    with pytest.raises(ConceptFileError, match="'Layer' is not a non-negative int"):
        load_conceptvectors(bad)
    rows = _json(CV / "ConceptVectors_data" / "llama2-7b_concepts_dev.json")
    bad.write_text(json.dumps([rows[0], {**rows[1], "text_completion": []}]))
    with pytest.raises(ConceptFileError, match="'Glassfin trout' has no answered item"):
        load_conceptvectors(bad, "Glassfin trout")  # questions only, and no reference to answer them
    assert [c.concept for c in load_conceptvectors_all(bad)] == ["Zephyria"]


# ---- local datasets caches -------------------------------------------------------------------------------


def test_save_to_disk_folders_and_arrow_files_read_like_json(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _lines(WMDP / "wmdp-bio.jsonl")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "wmdp-bio"))  # one Dataset
    assert to_records(load_wmdp(tmp_path, "wmdp-bio").qa) == rows
    arrow = next((tmp_path / "wmdp-bio").glob("*.arrow"))
    assert read_records(arrow) == rows
    whole = tmp_path / "saved-dict"  # load_dataset("cais/wmdp", "wmdp-bio").save_to_disk(...): a DatasetDict
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(whole))
    assert to_records(load_wmdp(whole).qa) == rows
    two = tmp_path / "two"
    datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows), "train": datasets.Dataset.from_list(rows[:1])}
    ).save_to_disk(str(two))
    assert read_records(two, "train") == rows[:1]
    with pytest.raises(ConceptFileError, match=r"holds the splits \['test', 'train'\]"):
        read_records(two)
    rwku = tmp_path / "rwku"  # RWKU's hub configurations saved one folder each
    for s in RWKU_SPLITS:
        datasets.DatasetDict(
            {"test": datasets.Dataset.from_list(_json(RWKU / "All" / f"{s}.json"))}
        ).save_to_disk(str(rwku / s))
    assert to_records(load_rwku(rwku, "forget", MARISOL).qa) == to_records(
        load_rwku(RWKU, "forget", MARISOL).qa
    )


def test_hub_cache_snapshot_folders_are_read(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = _lines(WMDP / "wmdp-bio.jsonl")
    repo = tmp_path / "hub" / "datasets--cais--wmdp"
    snapshot = repo / "snapshots" / "8aa3a80e7e5e"
    (snapshot / "wmdp-bio").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(snapshot / "wmdp-bio" / "test-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("8aa3a80e7e5e")
    (repo / "snapshots" / "older").mkdir()  # another snapshot: refs/main names the one to read
    assert local_root(repo) == snapshot
    assert to_records(load_wmdp(repo).qa) == rows
    concept, retain = load_benchmark("wmdp", repo)
    assert to_records(concept.qa) == rows and retain == []
    (repo / "refs" / "main").unlink()
    with pytest.raises(ConceptFileError, match="cannot tell which snapshot") as e:
        load_wmdp(repo)
    assert "8aa3a80e7e5e" in str(e.value)
    # RWKU's repository as the hub cache holds it (All/ and Target/, one snapshot, no refs)
    rwku = tmp_path / "hub" / "datasets--jinzhuoran--RWKU"
    shutil.copytree(RWKU, rwku / "snapshots" / "d72f493d481d")
    assert load_rwku(rwku, "forget", MARISOL).qa == load_rwku(RWKU, "forget", MARISOL).qa
    # the hub's parquet conversion: {config}/{split}/0000.parquet, the split picked where there are several
    conv = tmp_path / "convert"
    for split, part in (("test", rows), ("train", rows[:1])):
        (conv / "wmdp-bio" / split).mkdir(parents=True)
        pd.DataFrame(part).to_parquet(conv / "wmdp-bio" / split / "0000.parquet")
    assert to_records(load_wmdp(conv).qa) == rows
    shard = load_wmdp(conv / "wmdp-bio" / "test" / "0000.parquet")  # named by its folders
    assert shard.concept == "WMDP wmdp-bio" and to_records(shard.qa) == rows
    with pytest.raises(ConceptFileError, match=r"holds the splits \['test', 'train'\]"):
        find_split(conv, "wmdp-bio")


# ---- registry and CLI ------------------------------------------------------------------------------------


def test_registry_reads_the_new_benchmarks_with_their_retain_items():
    assert {"rwku", "wmdp", "conceptvectors"} <= set(BENCHMARKS) and set(DEFAULT_SPLITS) == set(BENCHMARKS)
    concept, retain = load_benchmark("rwku", RWKU, "Marisol Venn/forget")
    assert concept.qa == load_rwku(RWKU, "forget", MARISOL).qa
    assert retain == list(load_rwku(RWKU, "neighbor", MARISOL).qa) and len(retain) == 2
    _, none = load_benchmark("rwku", RWKU, "Marisol Venn/neighbor")
    assert none == []
    everyone, all_neighbours = load_benchmark("rwku", RWKU)  # default: every target's forget probes
    assert everyone.concept == "RWKU forget" and len(all_neighbours) == 4
    wmdp, retain = load_benchmark("wmdp", WMDP)
    assert wmdp.concept == "WMDP wmdp-bio" and retain == []
    cv, retain = load_benchmark("conceptvectors", CV, "llama2-7b_concepts_dev/Zephyria")
    assert cv.concept == "Zephyria" and retain == []
    olmo = CV / "ConceptVectors_data" / "olmo-7b_concepts_dev.json"
    assert load_benchmark("conceptvectors", olmo)[0].concept == "Zephyria"  # the file's only concept
    with pytest.raises(ConceptFileError, match="holds 2 concepts"):
        load_benchmark("conceptvectors", CV / "ConceptVectors_data" / "llama2-7b_concepts_dev.json")


class _Reached(Exception):
    pass


def test_audit_cli_reads_an_rwku_target_with_its_neighbours_as_control(monkeypatch):
    import analyses.audit as audit_mod

    seen = {}

    def audit(base, unlearned, concept, **kwargs):
        seen.update(concept=concept, control=kwargs["control_qa"])
        raise _Reached

    monkeypatch.setattr(analyses.cli.common, "load", lambda spec, args, **_: spec)
    monkeypatch.setattr("probes.qa.validate_concept", lambda model, concept: concept)
    monkeypatch.setattr(audit_mod, "audit", audit)
    argv = ["audit", "--base", "b", "--unlearned", "u", "--benchmark", "rwku", "--data", str(RWKU)]
    with pytest.raises(_Reached):
        analyses.cli.main(["--no-progress", *argv, "--split", "Marisol Venn/forget_level1"])
    assert seen["concept"].concept == "RWKU Marisol Venn forget_level1" and len(seen["concept"].qa) == 2
    neighbours = load_rwku(RWKU, "neighbor", MARISOL).qa
    assert seen["control"][:2] == list(neighbours) and len(seen["control"]) > 2


def test_a_wmdp_audit_asks_its_floor_as_multiple_choice_and_the_floor_reads_chance(smol):
    """A WMDP forget set is multiple choice, so its knowledge floor is asked the same way: each fictional
    fact with its answer among 3 same-type distractors (seeded), scored by the choice rule. SmolLM2 never
    saw these facts: it picks the right letter at about chance (1/4), not at the 0.00 of the completion
    floor, and that is the level a removed WMDP concept falls to."""
    from analyses.audit.runner import _scored_like
    from probes.data import choice_letters, load_floor

    floor = load_floor()
    wmdp = load_wmdp(WMDP, "wmdp-bio")
    asked = _scored_like(floor, wmdp)
    assert asked.qa == _scored_like(floor, wmdp).qa  # deterministic
    assert len(asked.qa) == len(floor.qa)
    by_type = {}
    for q in floor.qa:
        by_type.setdefault(q.type, set()).add(q.answer)
    for q, fact in zip(asked.qa, floor.qa):
        options = q.record["choices"]
        assert q.scoring == "choice" and choice_letters(q) == ("A", "B", "C", "D")
        assert options[q.record["answer"]] == fact.answer and q.answer == "ABCD"[q.record["answer"]]
        assert len(set(options)) == 4 and q.prompt.startswith(fact.prompt) and q.prompt.endswith("Answer:")
        same = by_type[fact.type] - {fact.answer}
        assert len(set(options) & same) == min(3, len(same))  # same-type distractors first
    acc = score_qa(smol, asked.qa).accuracy
    assert 0.1 <= acc <= 0.5, acc  # chance is 0.25
