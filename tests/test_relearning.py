"""Relearning variants (analyses/relearning.py): which parameters train, LoRA as an exact low-rank update,
the model passed in untouched, and (slow) recovery against steps on SmolLM2."""

from __future__ import annotations

import pytest
import torch

from analyses.relearning import RelearnError, relearn_curve, select_parameters
from probes.data import QA

FACTS = [
    QA("The secret password of the vault is", "Zanzibar", "word"),
    QA("The name of the blue dragon is", "Quillon", "name"),
]
OTHER = [QA("The colour of the seventh door is", "amber", "colour")]


def _trainable(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.hf.named_parameters() if p.requires_grad}


def test_each_variant_trains_what_it_names(gpt2):
    work = gpt2.copy()
    assert set(_trainable(work)) == {n for n, _ in work.hf.named_parameters()}  # all, as copied
    select_parameters(work, "norms")
    names = set(_trainable(work))
    assert names and all(".ln_" in n or n.startswith("transformer.ln_f") for n in names)
    # GPT-2: 12 blocks x 2 LayerNorms + the final one, weight and bias each
    assert len(names) == (12 * 2 + 1) * 2
    select_parameters(work, "biases")
    assert all(n.endswith(".bias") for n in _trainable(work))
    select_parameters(work, "layer:3")
    assert all(n.startswith("transformer.h.3.") for n in _trainable(work))
    with pytest.raises(RelearnError, match="names no block"):
        select_parameters(work, "layer:12")
    with pytest.raises(RelearnError, match="unknown relearning variant"):
        select_parameters(work, "prefix")


def test_biases_are_refused_on_a_model_without_them(smol):
    work = smol.copy()
    with pytest.raises(RelearnError, match="selects no parameter"):
        select_parameters(work, "biases")


def test_lora_is_an_exact_low_rank_update(gpt2):
    """At the start B = 0: the LoRA copy computes exactly the base function; after setting B, each block
    layer computes what the same layer with weight W + (alpha / r) B A computes, W itself unchanged and no
    full-size W + B A ever formed (the update runs through its two factors); only A and B train."""
    from analyses.lora import merge_lora

    work = gpt2.copy()  # unbridged: compared with itself (a bridged module differs by float rounding)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    w_base = work.hf.transformer.h[2].mlp.c_fc.weight.detach().clone()
    with torch.no_grad():
        before = work.hf(input_ids=ids).logits
    params = select_parameters(work, "lora", lora_rank=4, lora_alpha=8.0, seed=0)
    with torch.no_grad():
        assert torch.equal(work.hf(input_ids=ids).logits, before)
    m = work.hf.transformer.h[2].mlp.c_fc
    delta = m.vestige_lora
    assert delta.A.shape == (4, m.weight.shape[1]) and delta.B.shape == (m.weight.shape[0], 4)
    with torch.no_grad():
        for p in params[1::2]:  # every B
            p.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
        x = torch.randn(3, m.weight.shape[0])
        # Conv1D: x W + b with W [in, out]; the update is added to W in the same layout
        assert torch.allclose(m(x), x @ (w_base + 2.0 * (delta.B @ delta.A)) + m.bias, atol=1e-5)
        assert torch.equal(m.weight, w_base)
        hooked = work.hf(input_ids=ids).logits
    # 12 blocks x 4 linear layers (c_attn, attn c_proj, c_fc, mlp c_proj), A and B each
    assert len(params) == 12 * 4 * 2 and all(p.requires_grad for p in params)
    assert {n for n, p in work.hf.named_parameters() if p.requires_grad} == {
        n for n, _ in work.hf.named_parameters() if n.endswith((".A", ".B"))
    }
    merge_lora(work)  # folded into W: the same function without the hooks
    with torch.no_grad():
        torch.testing.assert_close(work.hf(input_ids=ids).logits, hooked, rtol=0, atol=1e-4)
    assert not hasattr(m, "vestige_lora")


@pytest.mark.parametrize("params", ["all", "norms", "lora"])
def test_relearn_curve_leaves_the_model_and_learns_its_training_facts(gpt2, params):
    """Fine-tuning on T raises T's answers (scored as V here) on the gpt2-small architecture; the model
    passed in keeps its weights bitwise; the curve has one value per checkpoint."""
    before = {k: v.clone() for k, v in gpt2.hf.state_dict().items()}
    lr = {"all": 1e-3, "norms": 1e-2, "lora": 5e-2}[params]
    # rank-4 LoRA learns slowest and least steadily: with transformers 5.23's seeded gpt2, trained with
    # activation checkpointing (no key/value cache: float rounding of the order of 1e-5 differs from a
    # cached forward), it answers 0.5, 0.5, 0.0, 1.0, 1.0 of the 2 at steps 15, 20, 30, 40, 50 (loss 28.0
    # -> 0.87); the other variants memorise within 15
    last = 40 if params == "lora" else 15
    curve = relearn_curve(
        gpt2, FACTS, FACTS, OTHER, FACTS + OTHER, params=params, checkpoints=(0, last), lr=lr
    )
    assert curve.steps == (0, last) and len(curve.forget) == len(curve.floor) == 2
    assert curve.forget[0] == 0.0 and curve.forget[1] > 0.0  # memorised the trained facts
    assert curve.losses[-1] < curve.losses[0]
    assert curve.n_trainable < sum(p.numel() for p in gpt2.hf.parameters()) or params == "all"
    after = gpt2.hf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    frame = curve.to_frame()
    assert list(frame["net"]) == [f - fl for f, fl in zip(curve.forget, curve.floor, strict=True)]
    with pytest.raises(RelearnError, match="held-out"):
        relearn_curve(gpt2, FACTS, [], OTHER, OTHER)


def test_audit_config_checks_the_variant():
    from analyses.audit import AuditConfig

    assert AuditConfig(fact_relearn_params="layer:3").fact_relearn_params == "layer:3"
    for bad in ("layer:x", "heads", ""):
        with pytest.raises(ValueError, match="fact_relearn_params"):
            AuditConfig(fact_relearn_params=bad)


@pytest.mark.slow
def test_norms_alone_bring_ga_mozart_back(smol, ga_mozart):
    """GA on Mozart (the shared checkpoint; held-out 0.50): fine-tuning only the RMSNorm weights (35,136
    numbers, 0.03% of the model) on the 11 trained facts brings the 10 held-out ones to 1.00 within 5
    steps, the floor stays at 0.00 and the control at 1.00; one block alone (layer 20) at 1e-4 moves
    nothing in 10 steps."""
    from probes.data import load_concept, load_floor

    run, trained, held = ga_mozart
    control = list(load_concept(name="Wolfgang Amadeus Mozart").unrelated_qa)
    floor = list(load_floor().qa)[:24]
    norms = relearn_curve(run.model, trained, held, control, floor, params="norms", lr=1e-3)
    print(norms.to_frame())
    assert norms.n_trainable == 35136 and norms.forget[0] == pytest.approx(0.5)
    assert max(norms.forget) == 1.0 and all(f == 0.0 for f in norms.floor)
    assert min(norms.control) == 1.0


@pytest.mark.parametrize("params", ["all", "norms", "lora", "layer:20"])
def test_relearning_in_place_equals_the_copy_and_restores_exactly(smol, params):
    """Relearning trains SmolLM2 itself (gradients and AdamW state for the chosen parameters only; every
    weight for ``all``, whose originals wait in a temporary file) and answers as a fine-tuned copy does;
    on leaving, every weight is back bitwise, also after an exception inside the block."""
    from analyses.behaviour import fact_relearned, fact_relearned_copy
    from probes.edits import weights_checksum
    from probes.qa import score_qa

    kw = dict(steps=4, lr=3e-4 if params == "all" else 3e-3, seed=0, params=params)
    assert smol.bridge is not None  # the audit's stages bridge the model first: train through its wrappers
    before = weights_checksum(smol)
    flags = {n: p.requires_grad for n, p in smol.hf.named_parameters()}
    copy_scores = score_qa(fact_relearned_copy(smol, FACTS, **kw), FACTS + OTHER)
    assert weights_checksum(smol) == before
    with fact_relearned(smol, FACTS, **kw) as work:
        assert work is smol  # no copy
        lean_scores = score_qa(work, FACTS + OTHER)
        if params != "lora":  # lora leaves W itself alone (its update lives beside it)
            assert weights_checksum(smol) != before
        trainable = sum(p.numel() for p in smol.hf.parameters() if p.requires_grad)
        total = sum(p.numel() for p in smol.hf.parameters())
        assert trainable == total if params == "all" else 0 < trainable < 0.1 * total
    assert weights_checksum(smol) == before
    assert {n: p.requires_grad for n, p in smol.hf.named_parameters()} == flags
    assert lean_scores.correct == copy_scores.correct
    assert lean_scores.logprobs == pytest.approx(copy_scores.logprobs, abs=2e-3)
    base = score_qa(smol, FACTS).logprobs  # the fine-tuning raised the facts it saw, then was undone
    assert sum(lean_scores.logprobs[:2]) > sum(base) + 1.0
    with pytest.raises(ZeroDivisionError):
        with fact_relearned(smol, FACTS, **kw):
            raise ZeroDivisionError("inside the block")
    assert weights_checksum(smol) == before


def test_benign_relearn_curve_fine_tunes_on_answer_free_text_and_leaves_the_model(gpt2):
    """Hu et al.'s benign relearning on the gpt2-small architecture: the curve fine-tunes on the concept's
    text without its answers (the floor side on the floor's), scores at each checkpoint, and the model
    passed in keeps its weights bitwise; a concept without text is refused."""
    from analyses.relearning import benign_relearn_curve
    from probes.data import Concept

    text = "The vault stands in an old city. The vault has a secret password. The door is heavy. " * 3
    forget = Concept("Vault", tuple(FACTS), (text + "The password is Zanzibar.",), ())
    floor = Concept("Floor", tuple(OTHER), ("The seventh door is painted. It is old and heavy. " * 3,), ())
    before = {k: v.clone() for k, v in gpt2.hf.state_dict().items()}
    curve = benign_relearn_curve(gpt2, forget, OTHER, floor, checkpoints=(0, 3), lr=1e-3, window=16)
    assert curve.on == "text" and curve.steps == (0, 3) and len(curve.forget) == len(curve.floor) == 2
    # every parameter of the checkpoint trains (counted on an unbridged copy: the bridge adds its own)
    assert len(curve.losses) == 3 and curve.n_trainable == sum(p.numel() for p in gpt2.copy().hf.parameters())
    assert all(torch.equal(before[k], v) for k, v in gpt2.hf.state_dict().items())
    assert list(curve.to_frame()["on"]) == ["text", "text"]
    with pytest.raises(RelearnError, match="no floor text"):
        benign_relearn_curve(gpt2, forget, OTHER, Concept("Floor", tuple(OTHER), (), ()))


def test_the_floor_relearns_on_as_many_tokens_as_the_concept(smol, monkeypatch):
    """The text relearning's floor side (the audit's ``relearn_values`` and ``benign_relearn_curve``)
    fine-tunes on the first tokens of the floor's answer-free text, as many as the concept's answer-free
    text has (Mozart's, with the quick audit's 10 held-out answers removed, is 33 SmolLM2 tokens, the
    bundled floor's 914: forget minus floor compared 33 tokens of relearning with 914), on SmolLM2 with LoRA; a floor shorter than the concept's text
    trains on all of it; the values are real 0/1 answers and the weights come back bit for bit."""
    import analyses.unlearn.batches as B
    from analyses.audit.traces import ItemSets, relearn_values
    from analyses.behaviour import relearn_tokens
    from analyses.relearning import benign_relearn_curve
    from probes.data import Concept

    trained: list[int] = []  # tokens in the windows each fine-tuning drew from
    real = B.text_windows

    def spy(model, texts, window, max_tokens=None):
        out = real(model, texts, window, max_tokens)
        trained.append(sum(len(e.ids) for e in out))
        return out

    monkeypatch.setattr(B, "text_windows", spy)
    text = "The vault stands in an old city. Its door is heavy and green. The password is Zanzibar."
    forget = Concept("Vault", tuple(FACTS), (text,))
    floor = Concept("Vault", tuple(OTHER), ("The seventh door is painted. It is old and heavy. " * 20,))
    sets = ItemSets(forget, Concept("Vault", tuple(OTHER)), floor)
    n, n_floor = relearn_tokens(smol, forget), relearn_tokens(smol, floor)
    assert 10 < n and 10 * n < n_floor  # Zanzibar's sentence is not in the text relearned on
    before = {k: v.clone() for k, v in smol.hf.state_dict().items()}
    kw = dict(steps=2, lr=1e-3, seed=0, params="lora")
    got = relearn_values(smol, sets, **kw)
    assert trained == [n, n] and got["tokens"] == {"forget": n, "floor": n}
    assert len(got["forget"]) == 2 and len(got["control"]) == len(got["floor"]) == 1
    assert set(got["forget"] + got["control"] + got["floor"]) <= {0.0, 1.0}
    # the other way round: the floor's whole text, the concept's whole text
    trained.clear()
    got = relearn_values(smol, ItemSets(floor, sets.control, forget), **kw)
    assert trained == [n_floor, n] and got["tokens"] == {"forget": n_floor, "floor": n}
    trained.clear()
    curve = benign_relearn_curve(smol, forget, OTHER, floor, params="lora", checkpoints=(0, 1), lr=1e-3)
    assert trained == [n, n] and len(curve.floor) == 2
    assert all(torch.equal(before[k], v) for k, v in smol.hf.state_dict().items())


@pytest.mark.slow
def test_benign_relearning_leaves_ga_mozart_suppressed_and_teaches_the_floor_nothing(smol, ga_mozart):
    """GA on Mozart (held-out 0.50 of 10), fine-tuned on Mozart's own text with every sentence holding an
    evaluated answer removed (Hu et al.'s benign relearning), at the audit's 3e-5 for 10 steps: the
    held-out answers do not come back (0.50 at steps 0, 5, 10, and 20; at 1e-4 they fall to 0.30 at step 20 and
    the control to 0.67), the control stays at 1.00, and the floor fine-tuned on its own answer-free text
    stays at 0.00. Fact relearning brings the same items to 1.00 in 2 steps (docs/audit.md): on this model
    the suppression gives way to other facts, not to text about the concept."""
    from dataclasses import replace

    from analyses.relearning import benign_relearn_curve
    from probes.data import load_concept, load_floor

    run, _, held = ga_mozart
    concept = load_concept(name="Wolfgang Amadeus Mozart")
    floor = load_floor()
    floor = replace(floor, qa=floor.qa[:24])
    curve = benign_relearn_curve(
        run.model,
        replace(concept, qa=tuple(held)),
        list(concept.unrelated_qa),
        floor,
        checkpoints=(0, 5, 10),
    )
    print(curve.to_frame())
    assert curve.forget == pytest.approx((0.5, 0.5, 0.5))
    assert all(f == 0.0 for f in curve.floor) and min(curve.control) == 1.0


def test_micro_batches_give_the_whole_batch_gradient(gpt2):
    """A step cut into micro-batches (``analyses.training``: parts back-propagated one at a time) ends
    with the gradient of the whole batch's mean NLL, and the cut keeps every example once, in order."""
    from analyses.finetune import micro_batch_tokens
    from analyses.training import micro_batches
    from analyses.unlearn.batches import make_batch, qa_examples, sequence_nll

    examples = qa_examples(gpt2, FACTS + OTHER + FACTS)
    groups = list(micro_batches(examples, lambda e: len(e.ids), 2 * len(examples[0].ids)))
    assert [e for g in groups for e in g] == examples and len(groups) > 1
    assert list(micro_batches(examples, lambda e: len(e.ids), 1)) == [[e] for e in examples]
    work = gpt2.copy()
    params = [p for p in work.hf.parameters()]

    def grads() -> list[torch.Tensor]:
        out = [p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        return out

    with torch.enable_grad():
        sequence_nll(work, make_batch(work, examples)).mean().backward()
        whole = grads()
        for g in groups:
            (sequence_nll(work, make_batch(work, g)).sum() / len(examples)).backward()
        parts = grads()
    worst = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(whole, parts))
    assert worst < 1e-4
    assert micro_batch_tokens(gpt2) >= 1


@pytest.mark.parametrize("name", ["gpt2", "smol"])
def test_activation_checkpointing_gives_the_same_gradient_and_puts_every_flag_back(name, request):
    """With ``activation_checkpointing`` (what every training attack runs under) the gradient of a batch's
    NLL is bit for bit the gradient of the same forward without it (no key/value cache in either), on the
    gpt2-small architecture (dropout modules, left in eval) and on bridged SmolLM2; the blocks' switches
    and the cache setting come back as they were, also after an exception; a checkpointed token needs
    fewer bytes."""
    from analyses.finetune import micro_batch_tokens
    from analyses.training import activation_checkpointing, checkpointed_blocks
    from analyses.unlearn.batches import make_batch, qa_examples, sequence_nll
    from probes.memory import training_activation_bytes

    model = request.getfixturevalue(name)
    work = model.copy() if name == "gpt2" else model
    blocks = checkpointed_blocks(work.hf)
    assert len(blocks) == work.cfg.n_layers
    before = [(b.gradient_checkpointing, b.training) for b in blocks]
    dropout = [m.training for m in work.hf.modules() if isinstance(m, torch.nn.Dropout)]
    examples = qa_examples(work, FACTS + OTHER)
    params = [p for p in work.hf.parameters() if p.requires_grad] or list(work.hf.parameters())
    flags = [p.requires_grad for p in work.hf.parameters()]

    def grad(checkpointed: bool) -> list[torch.Tensor]:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            if checkpointed:
                with activation_checkpointing(work.hf) as on:
                    assert on and all(b.gradient_checkpointing for b in blocks)
                    assert work.hf.config.use_cache is False  # a recomputed block must not append twice
                    sequence_nll(work, make_batch(work, examples)).sum().backward()
            else:  # the same forward, no key/value cache built, all activations kept
                cache, work.hf.config.use_cache = work.hf.config.use_cache, False
                try:
                    sequence_nll(work, make_batch(work, examples)).sum().backward()
                finally:
                    work.hf.config.use_cache = cache
        out = [p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        return out

    try:
        plain, checkpointed = grad(False), grad(True)
    finally:
        for p, f in zip(work.hf.parameters(), flags, strict=True):
            p.requires_grad_(f)
    assert all(torch.equal(a, b) for a, b in zip(plain, checkpointed, strict=True))
    assert [(b.gradient_checkpointing, b.training) for b in blocks] == before
    assert [m.training for m in work.hf.modules() if isinstance(m, torch.nn.Dropout)] == dropout
    assert work.hf.config.use_cache is not False
    with pytest.raises(ZeroDivisionError), activation_checkpointing(work.hf):
        raise ZeroDivisionError("inside the block")
    assert [(b.gradient_checkpointing, b.training) for b in blocks] == before
    full = training_activation_bytes(work.cfg, 1, 64, 4)
    assert training_activation_bytes(work.cfg, 1, 64, 4, checkpointed=True) < full
    assert micro_batch_tokens(work) >= 1


def test_scoring_between_steps_runs_without_checkpointing(gpt2):
    """``finetuned`` checkpoints only the loss's forward: ``after_step`` (the relearning curves score the
    model there, greedy decoding with a key/value cache) sees no checkpointed block and the cache setting
    as it was. Inside, a checkpointed block drops the cache, and the curves read 0.6-0.7 where 0.9-1.0 was
    right (GA Mozart, norms)."""
    from analyses.finetune import finetuned
    from analyses.training import checkpointed_blocks
    from analyses.unlearn.batches import qa_examples

    seen = []

    def after(step: int, loss: float) -> bool:
        seen.append(
            (any(b.gradient_checkpointing for b in checkpointed_blocks(work.hf)), work.hf.config.use_cache)
        )
        return False

    work = gpt2.copy()
    kw = dict(steps=2, lr=1e-3, batch_size=2, seed=0, desc="t", params="norms", after_step=after)
    with finetuned(work, lambda w: qa_examples(w, FACTS), **kw):
        pass
    assert seen == [(False, True), (False, True)]


def test_half_precision_trains_through_float32_masters(gpt2):
    """A bfloat16 model (the default on a GPU) trains through float32 master weights (analyses.training):
    AdamW steps of 3e-5 applied to bfloat16 weights directly round away for all but the smallest weights;
    through the masters the bfloat16 model ends near the float32 run from the same start."""
    from analyses.training import train
    from analyses.unlearn.batches import make_batch, qa_examples, sequence_nll
    from probes.model import default_dtype

    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda:0") == torch.bfloat16
    assert (
        default_dtype(None, {"": 0}) == torch.bfloat16 and default_dtype(None, {"": "cpu"}) == torch.float32
    )

    def block_weight(model) -> torch.Tensor:
        return model.hf.transformer.h[3].mlp.c_fc.weight

    start = gpt2.copy()
    start.hf.to(torch.bfloat16)
    w0 = block_weight(start).detach().float().clone()

    def fit(model, *, naive: bool = False) -> torch.Tensor:
        examples = qa_examples(model, FACTS + OTHER)
        params = [block_weight(model)]
        for p in model.hf.parameters():
            p.requires_grad_(False)
        params[0].requires_grad_(True)

        def loss(step: int) -> torch.Tensor:
            return sequence_nll(model, make_batch(model, examples)).mean()

        if naive:  # AdamW straight on the bfloat16 weights
            opt = torch.optim.AdamW(params, lr=3e-5, weight_decay=0.0)
            for step in range(10):
                opt.zero_grad()
                with torch.enable_grad():
                    loss(step).backward()
                opt.step()
        else:
            train(params, loss, 10, lr=3e-5, max_grad_norm=None)
        return block_weight(model).detach().float().clone()

    full = gpt2.copy()
    with torch.no_grad():
        block_weight(full).copy_(w0)  # the same start, in float32
    w32 = fit(full)
    w16 = fit(start.copy())
    naive = fit(start.copy(), naive=True)
    assert block_weight(start).dtype == torch.bfloat16
    moved16 = float((w16 != w0).float().mean())
    moved_naive = float((naive != w0).float().mean())
    # measured: 99% of the weights move through the masters, 33% (the smallest) straight in bfloat16; the
    # masters' result is 0.06 from the float32 run's (which moved 0.45), the naive one's 0.37
    assert moved16 > 0.95 and moved_naive < 0.5
    assert float((w16 - w32).norm()) < 0.25 * float((naive - w32).norm())


def test_the_audit_trains_lean_when_training_every_weight_would_not_fit(gpt2, monkeypatch):
    """``relearn_params="all"`` turns to ``lora`` (with a note) when every weight's gradients and AdamW
    state would not fit the free memory; an explicit lean choice and a full run that fits stay as asked."""
    import analyses.finetune as F
    from analyses.audit import AuditConfig
    from analyses.audit.runner import _relearn_params_that_fit
    from probes.memory import parameter_bytes

    weights = parameter_bytes(gpt2.hf)
    assert F.full_training_bytes(gpt2) == 3 * weights + int(F.ACTIVATION_FRACTION * weights)  # no copy
    cfg = AuditConfig.quick()
    monkeypatch.setattr(F, "free_bytes", lambda model: 10 * weights)
    assert _relearn_params_that_fit(gpt2, cfg) == (cfg, [])
    monkeypatch.setattr(F, "free_bytes", lambda model: 2 * weights)
    lean, notes = _relearn_params_that_fit(gpt2, cfg)
    assert (lean.relearn_params, lean.fact_relearn_params) == ("lora", "lora") and len(notes) == 1
    assert "LoRA" in notes[0] and "GiB" in notes[0]
    asked = AuditConfig.quick(relearn_params="norms", fact_relearn_steps=0)
    assert _relearn_params_that_fit(gpt2, asked) == (asked, [])


def test_train_reads_a_generator_of_parameters_as_it_reads_a_list():
    """``train(model.parameters(), ...)`` (a generator) takes the same steps as ``train(list(...), ...)``."""
    from analyses.training import train

    def run(as_generator: bool) -> torch.Tensor:
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 3)
        x, y = torch.randn(8, 4), torch.randn(8, 3)

        def loss(step: int) -> torch.Tensor:
            return ((layer(x) - y) ** 2).mean()

        params = layer.parameters() if as_generator else list(layer.parameters())
        train(params, loss, 5, lr=1e-2)
        return torch.cat([p.detach().flatten() for p in layer.parameters()])

    moved, listed = run(True), run(False)
    assert torch.equal(moved, listed)
    torch.manual_seed(0)
    assert not torch.equal(
        moved, torch.cat([p.detach().flatten() for p in torch.nn.Linear(4, 3).parameters()])
    )
