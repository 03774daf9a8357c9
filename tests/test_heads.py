"""Retrieval heads, masking, knowledge conflicts, patching and pruning (issue heads)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import heads_zeroed_in_hf

from probes import heads, hooks, memory_heads, retrieval
from probes.data import QA

NEEDLES = [
    retrieval.Needle(
        "The secret ingredient of the village soup is smoked paprika from Hungary.",
        "What is the secret ingredient of the village soup?",
        "smoked paprika",
    ),
    retrieval.Needle(
        "Professor Lindqvist keeps her spare key under a blue ceramic frog.",
        "Where does Professor Lindqvist keep her spare key?",
        "a blue ceramic frog",
    ),
]
HAYSTACK = (
    "A small garden asks for less than most people fear. The first lesson is patience. Seeds do not care "
    "about our schedules. Soil is the real subject of gardening. Good soil is dark and crumbly. It holds "
    "water without becoming a swamp. Compost feeds the soil slowly. Mulch keeps the weeds down. "
)
QAS = [
    QA("The Eiffel Tower is in the city of", "Paris", "city"),
    QA("The Colosseum is in the city of", "Rome", "city"),
    QA("Big Ben is in the city of", "London", "city"),
    QA("The Brandenburg Gate is in the city of", "Berlin", "city"),
    QA("The Statue of Liberty is in the city of", "New York", "city"),
    QA("Harry Potter's best friend is Ron", "Weasley", "surname"),
    QA("The author of Harry Potter is J. K.", "Rowling", "surname"),
    QA("Harry Potter's other best friend is Hermione", "Granger", "surname"),
    QA("The theory of relativity was developed by Albert", "Einstein", "surname"),
    QA("The largest planet in the solar system is", "Jupiter", "planet"),
    QA("The planet closest to the Sun is", "Mercury", "planet"),
    QA("The red planet is", "Mars", "planet"),
    QA("The planet with the most famous rings is", "Saturn", "planet"),
]


# ---- needle harness ------------------------------------------------------------------------------------
def test_needle_span_and_depth(gpt2):
    for chat in (True, False):
        tests = retrieval.build_tests(gpt2, NEEDLES, HAYSTACK, [120], [0.0, 0.5, 1.0], chat=chat)
        assert len(tests) == 6
        for t in tests:
            s, e = t.span
            assert gpt2.tokenizer.decode(list(t.ids[s:e])).strip().lower() == t.needle.answer.lower()
            assert 120 <= len(t.ids) < 120 + 80  # context plus question template
        # Depth 0 puts the needle first, depth 1 last (sentence boundaries).
        starts = [t.span[0] for t in tests if t.needle is NEEDLES[0]]
        assert starts[0] < starts[1] < starts[2]


def test_rouge1_recall():
    assert retrieval.rouge1_recall("smoked paprika", "It is smoked Paprika from Hungary") == 1.0
    assert retrieval.rouge1_recall("a blue ceramic frog", "under a blue rock") == 0.5
    assert retrieval.rouge1_recall("smoked paprika", "") == 0.0


def test_needle_file_is_checked(tmp_path):
    bad = tmp_path / "needles.json"
    bad.write_text(json.dumps([{"needle": "The key is red.", "question": "Which key?", "answer": "blue"}]))
    with pytest.raises(retrieval.HaystackError, match="does not occur"):
        retrieval.load_needles(bad)


# ---- retrieval score vs a naive loop over full attention patterns --------------------------------------
def _naive_scores(model, ids, tokens, span):
    """Recompute the whole sequence at every step; take the last row of every full attention pattern."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    hits = torch.zeros(L, H)
    argmax = []
    names = hooks.all_layers(hooks.attn_pattern, L)
    seq = list(ids)
    start, end = span
    for tok in tokens:
        logits, cache = hooks.run_with_cache(model, torch.tensor([seq]), names)
        assert int(logits[0, -1].argmax()) == tok  # the cached decoding is greedy decoding
        argmax.append(torch.stack([cache[n][0, :, -1].argmax(-1) for n in names]))
        for layer in range(L):
            row = cache[names[layer]][0, :, -1]  # [heads, keys]
            for h in range(H):
                j = int(row[h].argmax())
                if start <= j < end and seq[j] == tok:
                    hits[layer, h] += 1.0 / (end - start)
        seq.append(tok)
    return hits, argmax


@pytest.fixture(scope="module")
def sharp_gpt2(gpt2):
    """The gpt2-small architecture with queries scaled up, so attention rows have clear maxima."""
    model = gpt2.copy()
    d = model.cfg.d_model
    with torch.no_grad():
        for block in model.hf.transformer.h:
            block.attn.c_attn.weight[:, :d] *= 30
    return model


def test_retrieval_score_equals_naive_loop_gpt2(sharp_gpt2):
    model = sharp_gpt2
    test = retrieval.build_tests(model, NEEDLES[:1], HAYSTACK, [60], [0.5], chat=False)[0]
    tokens, _ = retrieval.decode(model, test.ids, 5)
    rows: list[torch.Tensor] = []
    fast_tokens, fast = retrieval.decode(model, test.ids, 5, span=test.span, argmax_out=rows)
    assert fast_tokens == tokens
    naive, naive_rows = _naive_scores(model, test.ids, tokens, test.span)
    # Every step's argmax key per head, read from the cached single query row, equals the full pattern's.
    assert all(torch.equal(a, b) for a, b in zip(rows, naive_rows, strict=True))
    assert len({int(j) for r in rows for j in r.flatten()}) > 10  # the heads look at many positions
    assert torch.allclose(fast.cpu(), naive, atol=1e-6)


def test_retrieval_score_equals_naive_loop_grouped_query(smol):
    """SmolLM2 (9 query heads on 3 key-value heads) copying a real needle answer."""
    needle = retrieval.Needle(
        "Marta's iguana is named Zanzibar.", "What is Marta's iguana named?", "Zanzibar"
    )
    test = retrieval.build_tests(smol, [needle], HAYSTACK, [250], [0.5], chat=True)[0]
    tokens, fast = retrieval.decode(smol, test.ids, 16, span=test.span)
    naive, _ = _naive_scores(smol, test.ids, tokens, test.span)
    assert "zanzibar" in smol.tokenizer.decode(tokens).lower()
    assert naive.max() >= 0.5  # some head copies the answer
    assert torch.allclose(fast.cpu(), naive, atol=1e-6)


# ---- masking ------------------------------------------------------------------------------------------
def test_uniform_masking_averages_visible_values(any_model):
    """A uniformly masked head outputs the mean of the values its query may see (padding stays masked);
    grouped-query heads read key-value head h // (n_heads / n_kv_heads)."""
    model = any_model
    cfg = model.cfg
    layer, head = cfg.n_layers // 2, cfg.n_heads - 1
    ids, mask = model.tokenize(["The capital of France is Paris, and", "Hello there"], padding_side="left")
    seen = {}

    def rec(name):
        def fn(act, hook):  # keyed by our name: the bridge reports aliases under their own names
            seen[name] = act.detach()

        return fn

    v_name = f"blocks.{layer}.attn.hook_v"
    fwd = heads.mask_hooks([(layer, head)], "uniform") + [(n, rec(n)) for n in (hooks.attn_z(layer), v_name)]
    hooks.run_with_hooks(model, ids, fwd, mask)
    z, v = seen[hooks.attn_z(layer)], seen[v_name]
    kv = head // (cfg.n_heads // cfg.n_kv_heads)
    for b in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            if not mask[b, p]:
                continue
            visible = mask[b, : p + 1].bool()
            expected = v[b, : p + 1][visible, kv].mean(0)
            assert torch.allclose(z[b, p, head], expected, atol=1e-5)


def test_zero_masking_equals_hf_with_head_input_zeroed(any_model):
    model = any_model
    cfg = model.cfg
    chosen = [(1, 0), (cfg.n_layers - 1, cfg.n_heads - 1), (cfg.n_layers - 1, 2)]
    ids, mask = model.tokenize(["The capital of France is"])
    with torch.no_grad():
        masked = hooks.run_with_hooks(model, ids, heads.mask_hooks(chosen, "zero"), mask)
        with heads_zeroed_in_hf(model, chosen):
            expected = model.forward(ids, mask).logits
        plain = model.forward(ids, mask).logits
    assert torch.allclose(masked, expected, atol=1e-4)
    assert not torch.allclose(masked, plain, atol=1e-3)


def test_random_heads_exclude_retrieval_heads():
    excluded = [(0, 0), (1, 2), (3, 1)]
    for seed in range(5):
        drawn = heads.random_heads(4, 3, 9, exclude=excluded, seed=seed)
        assert len(set(drawn)) == 9 and not set(drawn) & set(excluded)
    scores = torch.tensor([[0.0, 0.5], [0.2, 0.05]])
    assert heads.top_heads(scores, 2) == [(0, 1), (1, 0)]
    assert heads.top_heads(scores, 1, largest=False) == [(0, 0)]


# ---- knowledge conflicts and patching -----------------------------------------------------------------
def test_build_conflicts(gpt2):
    cs = memory_heads.build_conflicts(gpt2, QAS)
    assert len(cs) >= 8
    by_answer = {q.answer: q.type for q in QAS}
    tok = gpt2.tokenizer
    for c in cs:
        assert by_answer[c.context_answer] == by_answer[c.memory_answer] == by_answer[c.corrupt_answer]
        assert len({c.memory_answer, c.context_answer, c.corrupt_answer}) == 3
        assert c.clean_prompt == f"{c.prompt} {c.context_answer}. {c.prompt}"
        assert len(tok(c.clean_prompt)["input_ids"]) == len(tok(c.corrupt_prompt)["input_ids"])
        assert c.memory_token != c.context_token


def test_patching_every_head_reproduces_clean_logits(any_model):
    model = any_model
    c = memory_heads.build_conflicts(model, QAS, max_items=1)[0]
    clean, _ = model.tokenize([c.clean_prompt])
    corrupt, _ = model.tokenize([c.corrupt_prompt])
    names = hooks.all_layers(hooks.attn_z, model.cfg.n_layers)
    with torch.no_grad():
        clean_logits, cache = hooks.run_with_cache(model, clean, names)
        corrupt_logits = model.bridge(corrupt)
    everything = heads.all_heads(model.cfg.n_layers, model.cfg.n_heads)
    patched = memory_heads.patch_run(model, corrupt, cache, everything)
    same = (clean == corrupt)[0]  # where the tokens agree, all inputs to the position are now clean
    assert same[-1] and not same.all()
    assert torch.allclose(patched[0, same], clean_logits[0, same], atol=1e-4)
    assert not torch.allclose(corrupt_logits[0, -1], clean_logits[0, -1], atol=1e-3)


def test_exact_patching_batches_equal_single_patches(gpt2):
    cs = memory_heads.build_conflicts(gpt2, QAS, max_items=2)
    eff = memory_heads.exact_patching(gpt2, cs, heads_per_batch=7, progress=False)
    names = hooks.all_layers(hooks.attn_z, gpt2.cfg.n_layers)
    for layer, head in [(0, 0), (5, 3), (11, 11)]:
        total = 0.0
        for c in cs:
            clean, _ = gpt2.tokenize([c.clean_prompt])
            corrupt, _ = gpt2.tokenize([c.corrupt_prompt])
            mem, ctx = torch.tensor([c.memory_token]), torch.tensor([c.context_token])
            _, cache = hooks.run_with_cache(gpt2, clean, names)
            with torch.no_grad():
                base = memory_heads.metric(gpt2.bridge(corrupt), mem, ctx)
            total += float(
                memory_heads.metric(memory_heads.patch_run(gpt2, corrupt, cache, [(layer, head)]), mem, ctx)
                - base
            )
        assert eff.effects[layer, head] == pytest.approx(total / len(cs), abs=1e-4)


def test_attribution_is_the_first_order_effect(gpt2):
    """Patching a small fraction a of one head's clean-corrupt difference moves the metric by a x its
    attribution (finite differences)."""
    cs = memory_heads.build_conflicts(gpt2, QAS, max_items=1)
    attr = memory_heads.attribution_patching(gpt2, cs)
    c = cs[0]
    clean, _ = gpt2.tokenize([c.clean_prompt])
    corrupt, _ = gpt2.tokenize([c.corrupt_prompt])
    mem, ctx = torch.tensor([c.memory_token]), torch.tensor([c.context_token])
    names = hooks.all_layers(hooks.attn_z, gpt2.cfg.n_layers)
    _, clean_cache = hooks.run_with_cache(gpt2, clean, names)
    _, corrupt_cache = hooks.run_with_cache(gpt2, corrupt, names)
    a = 1e-2
    with torch.no_grad():
        base = float(memory_heads.metric(gpt2.bridge(corrupt), mem, ctx))
    layer, head = heads.top_heads(attr.effects.abs(), 1)[0]
    mixed = {n: corrupt_cache[n] + a * (clean_cache[n] - corrupt_cache[n]) for n in names}
    moved = (
        float(memory_heads.metric(memory_heads.patch_run(gpt2, corrupt, mixed, [(layer, head)]), mem, ctx))
        - base
    )
    assert moved / a == pytest.approx(float(attr.effects[layer, head]), rel=0.05, abs=1e-4)
    assert attr.corrupt_metric == pytest.approx(base, abs=1e-3)


def test_conflict_rates_match_per_prompt_forward(smol):
    cs = memory_heads.build_conflicts(smol, QAS)
    rates = memory_heads.conflict_rates(smol, cs, batch_size=4)
    mem = ctx = 0
    with torch.no_grad():
        for c in cs:
            ids, _ = smol.tokenize([c.clean_prompt])
            nxt = int(smol.forward(ids).logits[0, -1].argmax())
            mem += nxt == c.memory_token
            ctx += nxt == c.context_token
    assert rates.memory_rate == pytest.approx(mem / len(cs))
    assert rates.context_rate == pytest.approx(ctx / len(cs))
    assert 0 < rates.memory_rate + rates.context_rate <= 1


@pytest.mark.slow
def test_attribution_agrees_with_exact_patching_smollm2(smol):
    from scipy.stats import spearmanr

    cs = memory_heads.build_conflicts(smol, QAS, max_items=4)
    exact = memory_heads.exact_patching(smol, cs, heads_per_batch=54, progress=False)
    attr = memory_heads.attribution_patching(smol, cs)
    rho = spearmanr(exact.effects.flatten().numpy(), attr.effects.flatten().numpy()).statistic
    assert rho >= 0.7
    assert exact.clean_metric == pytest.approx(attr.clean_metric, abs=1e-3)


def test_zero_baseline_is_the_pruning_effect(gpt2):
    """Exact zero-baseline effect of a head = metric(clean) - metric(clean with that head zeroed), the
    same hooks conflict_rates prunes with; attribution-zero is its first-order estimate (finite diffs)."""
    cs = memory_heads.build_conflicts(gpt2, QAS, max_items=2)
    eff = memory_heads.exact_patching(gpt2, cs, baseline="zero", heads_per_batch=5, progress=False)
    attr = memory_heads.attribution_patching(gpt2, cs, baseline="zero")
    assert eff.method == "exact-zero" and attr.method == "attribution-zero"
    for layer, head in [(0, 1), (6, 4), (11, 7)]:
        total = 0.0
        for c in cs:
            ids, _ = gpt2.tokenize([c.clean_prompt])
            mem, ctx = torch.tensor([c.memory_token]), torch.tensor([c.context_token])
            with torch.no_grad():
                clean = memory_heads.metric(gpt2.bridge(ids), mem, ctx)
                pruned = hooks.run_with_hooks(gpt2, ids, heads.mask_hooks([(layer, head)], "zero"))
            total += float(clean - memory_heads.metric(pruned, mem, ctx))
        assert eff.effects[layer, head] == pytest.approx(total / len(cs), abs=1e-4)
    # first order: scaling one head's output by (1 - a) moves the metric by -a x its attribution
    c = cs[0]
    ids, _ = gpt2.tokenize([c.clean_prompt])
    mem, ctx = torch.tensor([c.memory_token]), torch.tensor([c.context_token])
    one = memory_heads.attribution_patching(gpt2, [c], baseline="zero")
    layer, head = heads.top_heads(one.effects.abs(), 1)[0]
    a = 1e-2

    def shrink(z, hook):
        z = z.clone()
        z[:, :, head] *= 1 - a
        return z

    with torch.no_grad():
        base = float(memory_heads.metric(gpt2.bridge(ids), mem, ctx))
        moved = float(
            memory_heads.metric(hooks.run_with_hooks(gpt2, ids, [(hooks.attn_z(layer), shrink)]), mem, ctx)
        )
    assert (base - moved) / a == pytest.approx(float(one.effects[layer, head]), rel=0.05, abs=1e-4)


@pytest.mark.slow
def test_pruning_memory_and_context_heads_moves_the_rate_smollm2(smol):
    """PH3's finding on SmolLM2 (held-out conflicts): pruning the top memory heads (zero-baseline
    attribution on the locate half) lowers the memory-answer rate; pruning context heads raises it."""
    from probes.data import load_concepts

    items = [q for c in load_concepts() for q in c.qa]
    locate, evaluate = memory_heads.split(memory_heads.build_conflicts(smol, items, max_items=40))
    effects = memory_heads.attribution_patching(smol, locate, baseline="zero")
    p = memory_heads.pruning_experiment(smol, effects, evaluate, k=5)
    assert p.memory_pruned.memory_rate < p.baseline.memory_rate - 0.1
    assert p.context_pruned.memory_rate > p.baseline.memory_rate + 0.1
    assert p.memory_pruned.mean_metric < p.baseline.mean_metric < p.context_pruned.mean_metric


@pytest.mark.slow
def test_zero_attribution_agrees_with_exact_smollm2(smol):
    from scipy.stats import spearmanr

    cs = memory_heads.build_conflicts(smol, QAS, max_items=4)
    exact = memory_heads.exact_patching(smol, cs, baseline="zero", heads_per_batch=54, progress=False)
    attr = memory_heads.attribution_patching(smol, cs, baseline="zero")
    rho = spearmanr(exact.effects.flatten().numpy(), attr.effects.flatten().numpy()).statistic
    assert rho >= 0.7
    assert exact.clean_metric == pytest.approx(attr.clean_metric, abs=1e-3)


def test_heads_command_memory(tmp_path):
    """``vestige heads --kind memory`` on the gpt2-small architecture: keys, numbers, escaped report."""
    from analyses.cli import main

    concept = {
        "concept": "Places",
        "qa": [{"prompt": q.prompt, "answer": q.answer, "type": q.type} for q in QAS],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps([concept]))
    out = tmp_path / "out"
    argv = ["heads", "--model", "gpt2-seeded", "--device", "cpu", "--kind", "memory"]
    argv += ["--concept-file", str(path), "--max-conflicts", "4", "--k", "3", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "heads.json").read_text())
    assert len(result["effects"]) == 12 and len(result["effects"][0]) == 12
    assert 0 < len(result["memory_heads"]) <= 3 and 0 < len(result["context_heads"]) <= 3
    p = result["pruning"]
    for key in ("baseline_memory_rate", "memory_pruned_memory_rate", "context_pruned_memory_rate"):
        assert 0.0 <= p[key] <= 1.0
    assert p["n_locate"] == 2 and p["n_evaluate"] == 2
    # The strongest memory head's effect is the largest entry of the matrix.
    top = result["memory_heads"][0]
    assert result["effects"][top[0]][top[1]] == max(max(row) for row in result["effects"])
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Memory and context heads of gpt2-seeded" in html


def test_zeroed_heads_equals_zero_mask_and_restores(any_model):
    """The weight edit (W_O rows zeroed) = zeroing hook_z, on GPT-2 and grouped-query Llama; restored
    bitwise, also when the body raises."""
    from probes.edits import weights_checksum, zeroed_heads

    model = any_model
    ids, mask = model.tokenize(["The Eiffel Tower is in Paris. The Eiffel Tower is in"])
    chosen = [(0, 1), (2, 0), (2, 3)]
    with torch.no_grad():
        hooked = hooks.run_with_hooks(model, ids, heads.mask_hooks(chosen, "zero"), mask)
    before = weights_checksum(model)
    with zeroed_heads(model, chosen), torch.no_grad():
        edited = model.forward(ids, mask).logits
    torch.testing.assert_close(edited, hooked, rtol=1e-4, atol=1e-4)
    assert weights_checksum(model) == before
    with pytest.raises(KeyboardInterrupt), zeroed_heads(model, chosen):
        assert float(model.W_O(2)[: model.cfg.d_head].abs().sum()) == 0.0
        raise KeyboardInterrupt
    assert weights_checksum(model) == before


def test_recall_attribution_is_the_first_order_ablation_effect(gpt2):
    """Scaling one head's output by (1 - a) moves the answer's first-token log-prob by -a x its recall
    attribution (finite differences)."""
    from probes.qa import answer_ids

    item = QAS[0]
    eff = memory_heads.recall_attribution(gpt2, [item])
    layer, head = heads.top_heads(eff.abs(), 1)[0]
    pid, aid = answer_ids(gpt2, item.prompt, item.answer)
    ids = torch.tensor([pid])
    a = 1e-2

    def shrink(z, hook):
        z = z.clone()
        z[:, :, head] *= 1 - a
        return z

    with torch.no_grad():
        lp = lambda logits: float(torch.log_softmax(logits[0, -1].float(), -1)[aid[0]])  # noqa: E731
        base = lp(gpt2.bridge(ids))
        moved = lp(hooks.run_with_hooks(gpt2, ids, [(hooks.attn_z(layer), shrink)]))
    assert (base - moved) / a == pytest.approx(float(eff[layer, head]), rel=0.05, abs=1e-4)


@pytest.mark.parametrize("baseline", ["counterfactual", "zero"])
def test_attribution_runs_with_the_weights_frozen_and_gives_the_same_effects(gpt2, baseline, monkeypatch):
    """The backward of attribution patching reaches the head outputs only: with every weight frozen
    (``Model.frozen``: no layer input is saved for a weight gradient) the effects equal those of the same
    pass with the weights left trainable, and every ``requires_grad`` flag comes back, with no gradient
    left on a weight."""
    import contextlib

    cs = memory_heads.build_conflicts(gpt2, QAS, max_items=2)
    params = list(gpt2.hf.parameters())
    params[0].requires_grad_(False)  # a mixed set of flags must come back as it was
    flags = [p.requires_grad for p in params]
    seen: list[bool] = []
    real_run = hooks.run_with_hooks

    def spy(model, *a, **k):
        seen.append(any(p.requires_grad for p in model.hf.parameters()))
        return real_run(model, *a, **k)

    monkeypatch.setattr(hooks, "run_with_hooks", spy)
    try:
        frozen = memory_heads.attribution_patching(gpt2, cs, baseline=baseline)
        assert seen and not any(seen)  # every pass ran with no weight trainable
        assert [p.requires_grad for p in params] == flags
        assert all(p.grad is None for p in params)
        monkeypatch.setattr(type(gpt2), "frozen", lambda self: contextlib.nullcontext(self))
        trainable = memory_heads.attribution_patching(gpt2, cs, baseline=baseline)
    finally:
        params[0].requires_grad_(True)
    assert torch.allclose(frozen.effects, trainable.effects, atol=1e-6, rtol=1e-5)
    assert frozen.clean_metric == pytest.approx(trainable.clean_metric, abs=1e-6)


def test_frozen_restores_every_flag_also_on_an_exception(gpt2):
    params = list(gpt2.hf.parameters())
    params[1].requires_grad_(False)
    flags = [p.requires_grad for p in params]
    try:
        with pytest.raises(RuntimeError, match="inside"), gpt2.frozen() as m:
            assert m is gpt2 and not any(p.requires_grad for p in params)
            raise RuntimeError("inside")
        assert [p.requires_grad for p in params] == flags
    finally:
        params[1].requires_grad_(True)


def test_conflict_pairs_are_batched_within_the_token_budget_and_in_order():
    """Attribution patching's batching (``probes.batching.token_batches`` on ``rows`` x each item's longest
    prompt: a conflict is a clean and a corrupt row) against a naive check on seeded lengths: every index
    once, in order; each run holds at most ``batch_size`` items and, left-padded (rows x the run's longest),
    at most ``max_tokens`` tokens unless it is one item; no run could have taken the next item."""
    import random

    from probes.batching import token_batches

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 30))]
        batch, budget, rows = rng.randint(1, 8), rng.randint(1, 120), rng.choice([1, 2])
        runs = [list(r) for r in token_batches([rows * n for n in lengths], batch, budget)]
        assert [i for r in runs for i in r] == list(range(len(lengths)))
        for r, nxt in zip(runs, runs[1:] + [None], strict=True):
            padded = len(r) * rows * max(lengths[i] for i in r)
            assert len(r) <= batch and (padded <= budget or len(r) == 1)
            if nxt is not None and len(r) < batch:  # it stopped because the next item would not fit
                assert (len(r) + 1) * rows * max(lengths[i] for i in r + [nxt[0]]) > budget


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_attribution_is_the_same_in_bounded_batches(name, request):
    """Attribution patching (counterfactual and zero) and ``recall_attribution`` in batches cut to a token
    budget give the effects of one batch: a budget of one token runs each conflict alone, the default
    budget (``grad_pass_tokens``) as it cuts them, a huge one all at once."""
    model = request.getfixturevalue(name)
    cs = memory_heads.build_conflicts(model, QAS, max_items=4)
    assert len(cs) >= 3
    for baseline in ("counterfactual", "zero"):
        whole = memory_heads.attribution_patching(model, cs, baseline=baseline, max_tokens=10**6)
        for budget in (1, None):
            cut = memory_heads.attribution_patching(model, cs, baseline=baseline, max_tokens=budget)
            torch.testing.assert_close(cut.effects, whole.effects, rtol=1e-4, atol=1e-5)
            assert cut.clean_metric == pytest.approx(whole.clean_metric, rel=1e-5, abs=1e-5)
    whole = memory_heads.recall_attribution(model, QAS, max_tokens=10**6)
    torch.testing.assert_close(
        memory_heads.recall_attribution(model, QAS, max_tokens=1), whole, rtol=1e-4, atol=1e-5
    )


def test_grad_pass_budget_bounds_what_autograd_saves(smol):
    """``grad_pass_tokens`` on SmolLM2 (float32): 32 tokens, whose pass with gradients to every head output
    (attribution patching's) saves at most a tenth of the weights' bytes, counted tensor by tensor through
    autograd's saved-tensor hooks; the estimate per token is within 2x of what is saved (not a bound that
    would cut batches needlessly small)."""
    from probes.memory import (
        ACTIVATION_FRACTION,
        grad_pass_tokens,
        parameter_bytes,
        training_activation_bytes,
    )

    budget = grad_pass_tokens(smol)
    assert budget == 32
    names = memory_heads._z_names(smol)
    saved: dict[int, int] = {}

    def pack(t):
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    ids = torch.randint(100, 5000, (2, budget // 2), generator=torch.Generator().manual_seed(0))
    acts: dict[str, torch.Tensor] = {}
    weights = {p.untyped_storage().data_ptr() for p in smol.hf.parameters()}
    with torch.enable_grad(), smol.frozen(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = hooks.run_with_hooks(
            smol, ids, memory_heads._keepers(names, acts), grad=True, logits_to_keep=1
        )
    got = sum(n for p, n in saved.items() if p not in weights)  # the frozen weights are saved by reference
    assert 0 < got <= ACTIVATION_FRACTION * parameter_bytes(smol.hf)
    estimate = training_activation_bytes(smol.cfg, 2, budget // 2, 4, logits=False)
    assert got <= estimate <= 2 * got, (got, estimate)
    assert logits.shape[1] == 1
