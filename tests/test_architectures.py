"""The architecture matrix: every instrument on tiny seeded configs of the families the field publishes
(Llama-3 with its rope scaling, Qwen2, Qwen3, Gemma-2, Gemma-3, Mistral, Phi-3, OLMo-2, GPT-NeoX), each
checked against an independent computation on the same model: the HF forward, the HF hidden states, the
weights read by hand. GPT-2 and SmolLM2's Llama layout are covered by every other test file."""

from __future__ import annotations

import pytest
import torch
from conftest import heads_zeroed_in_hf

from probes import heads, hooks, memory_heads
from probes.alignment import (
    HEAD_ARCHITECTURES,
    HeadLayoutError,
    aligned_to,
    permute_attention_heads,
    permute_mlp_neurons,
    random_head_permutations,
    random_permutations,
)
from probes.ches import ches_pairs
from probes.concepts import direct_effects, locate, scan, value_vectors
from probes.data import QA, Concept
from probes.edits import weights_checksum
from probes.errors import ModelLoadError
from probes.lens import lens_logits
from probes.linear import ProbeDataset, collect_activations
from probes.model import Model, smollm2_tokenizer
from probes.qa import answer_ids

# model_type -> the config fields that make it tiny (4 query heads on 2 kv heads, 3 layers, width 64)
TINY = dict(
    vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip
ARCHITECTURES = {
    "llama3": (
        "llama",
        dict(
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            )
        ),
    ),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", dict(head_dim=16)),
    "gemma2": ("gemma2", dict(head_dim=16, sliding_window=8)),
    "gemma3": ("gemma3_text", dict(head_dim=16, sliding_window=8)),
    "mistral": ("mistral", {}),
    "phi3": ("phi3", {}),
    "olmo2": ("olmo2", {}),
    "gpt_neox": ("gpt_neox", dict(rotary_pct=0.5)),
}
PROMPTS = ["The capital of France is", "Harry Potter's best friend is Ron Weasley, and"]


def tiny_model(name: str, seed: int = 0) -> Model:
    """A seeded random model of ``name``'s architecture with the SmolLM2 tokenizer; norms and biases drawn
    away from their 1 / 0 start so that every per-coordinate and per-head weight is distinct."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = ARCHITECTURES[name]
    torch.manual_seed(seed)
    sizes = {k: v for k, v in TINY.items() if k != "num_key_value_heads" or model_type != "gpt_neox"}
    cfg = AutoConfig.for_model(model_type, **sizes, **extra, attn_implementation="eager")
    hf = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.normal_(1.0 if "gemma" not in model_type else 0.0, 0.2)
            else:
                p.normal_(0.0, 0.1)
    return Model(hf, smollm2_tokenizer(), name=name)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny(request) -> Model:
    return tiny_model(request.param)


def _hf_logits(model: Model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model.forward(ids, mask).logits


def test_the_bridge_hooks_read_what_the_hf_model_computes(tiny):
    """Bridge logits = the HF forward; a left-padded row = the row alone; the MLP's output hook = its
    activations times the ``W_out`` view (+ bias), through the post-MLP norm where the block has one; the
    attention output hook = ``hook_z`` times the ``W_O`` view (+ bias), through the post-attention norm
    where it has one; nnsight reads the same residual stream."""
    ids, mask = tiny.tokenize(PROMPTS)
    names = [
        *hooks.all_layers(hooks.mlp_post, tiny.cfg.n_layers),
        *hooks.all_layers(hooks.mlp_out, tiny.cfg.n_layers),
        *hooks.all_layers(hooks.attn_z, tiny.cfg.n_layers),
        *hooks.all_layers(hooks.attn_out, tiny.cfg.n_layers),
        hooks.resid_post(1),
    ]
    with torch.no_grad():
        logits, cache = hooks.run_with_cache(tiny, ids, names, mask)
    ref = _hf_logits(tiny, ids, mask)
    assert torch.allclose(logits, ref, atol=1e-5), (logits - ref).abs().max()
    alone, _ = tiny.tokenize(PROMPTS[:1])
    n = alone.shape[1]
    assert torch.allclose(ref[0, -n:], _hf_logits(tiny, alone)[0], atol=1e-4)
    for layer in range(tiny.cfg.n_layers):
        mlp_bias = getattr(tiny.layer_module(layer, "mlp_out"), "bias", None)
        by_hand = cache[hooks.mlp_post(layer)] @ tiny.W_out(layer) + (0 if mlp_bias is None else mlp_bias)
        if tiny.mlp_out_norm(layer) is not None:
            by_hand = tiny.mlp_out_norm(layer)(by_hand)
        assert torch.allclose(cache[hooks.mlp_out(layer)], by_hand, atol=1e-5), layer
        z = cache[hooks.attn_z(layer)]
        attn_bias = getattr(tiny.layer_module(layer, "attn_out"), "bias", None)
        by_hand = z.flatten(-2) @ tiny.W_O(layer) + (0 if attn_bias is None else attn_bias)
        if tiny.attn_out_norm(layer) is not None:
            by_hand = tiny.attn_out_norm(layer)(by_hand)
        assert torch.allclose(cache[hooks.attn_out(layer)], by_hand, atol=1e-5), layer
    with torch.no_grad(), tiny.nnsight.trace(ids, attention_mask=mask):
        resid = tiny.nnsight.model.layers[1].output.save() if tiny.family != "gpt_neox" else None
        resid = resid if resid is not None else tiny.nnsight.gpt_neox.layers[1].output.save()
    resid = resid[0] if isinstance(resid, tuple) else resid
    real = mask.bool()
    assert torch.allclose(resid[real], cache[hooks.resid_post(1)][real], atol=1e-5)


def test_lens_and_vocabulary_projection_use_the_models_own_head(tiny):
    """The lens at the last layer = the model's logits (final norm, its gain, Gemma's soft cap); the scan's
    top tokens = the value vectors (centred for a LayerNorm) times the post-MLP norm's gain (Gemma-2/3,
    OLMo-2), the final norm's gain and ``W_U``."""
    ids, mask = tiny.tokenize(PROMPTS[:1])
    last = tiny.cfg.n_layers - 1
    with torch.no_grad():
        logits, cache = hooks.run_with_cache(tiny, ids, [hooks.resid_post(last)], mask)
        lens = lens_logits(tiny, cache[hooks.resid_post(last)])
    assert torch.allclose(lens, logits, atol=1e-4), (lens - logits).abs().max()
    # the final hidden states unembedded a slice at a time (membership's token statistics) = the forward
    with torch.no_grad():
        full = tiny.forward(ids, mask).logits
        hidden = tiny.final_hidden(ids, mask)
        sliced = torch.cat([tiny.unembed(hidden[:, i : i + 2]) for i in range(0, ids.shape[1], 2)], 1)
    assert torch.allclose(sliced, full, atol=1e-5), (sliced - full).abs().max()
    layer, k = 1, 5
    res = scan(tiny, [layer], k=k, final_norm=True)
    w = tiny.W_out(layer).detach()
    if isinstance(tiny.final_norm, torch.nn.LayerNorm):
        w = w - w.mean(-1, keepdim=True)
    weight = tiny.final_norm.weight.detach()
    gain = 1 + weight if "gemma" in tiny.hf.config.model_type else weight
    post = tiny.mlp_out_norm(layer)
    if post is not None:
        w = w * (1 + post.weight.detach() if "gemma" in tiny.hf.config.model_type else post.weight.detach())
    expected = ((w * gain) @ tiny.W_U).topk(k, dim=-1).indices
    assert torch.equal(torch.as_tensor(res.token_ids[0]), expected)
    assert torch.allclose(value_vectors(tiny, layer, final_norm=True), w * gain)


def test_neuron_permutation_keeps_the_function_and_alignment_undoes_it(tiny):
    other = Model(type(tiny.hf)(tiny.hf.config), tiny.tokenizer, name="copy")  # same weights, its own storage
    other.hf.load_state_dict(tiny.state_dict())
    ids, mask = tiny.tokenize(PROMPTS)
    ref = _hf_logits(tiny, ids, mask)
    permute_mlp_neurons(other, random_permutations(other, seed=2))
    assert not torch.equal(other.W_out(0), tiny.W_out(0))
    assert torch.allclose(_hf_logits(other, ids, mask), ref, atol=1e-4)
    arch = tiny.hf.config.model_type
    if arch in HEAD_ARCHITECTURES:
        permute_attention_heads(other, random_head_permutations(other, seed=3))
        assert torch.allclose(_hf_logits(other, ids, mask), ref, atol=1e-4)
    else:
        with pytest.raises(HeadLayoutError, match=arch):
            permute_attention_heads(other, random_head_permutations(other, seed=3))
    before = weights_checksum(other)
    with aligned_to(tiny, other) as info:
        assert info.comparable and info.realigned
        assert all(torch.equal(other.W_out(l), tiny.W_out(l)) for l in range(tiny.cfg.n_layers))
        if arch in HEAD_ARCHITECTURES:
            assert info.heads_realigned and weights_checksum(other) == weights_checksum(tiny)
    assert weights_checksum(other) == before


def test_head_masking_and_patching_act_on_the_heads_the_hf_model_computes(tiny):
    """Zeroing heads through ``hook_z`` = zeroing their slice of the output projection's input in the HF
    module; patching every head's ``hook_z`` from a clean run reproduces the clean logits."""
    cfg = tiny.cfg
    chosen = [(0, 1), (cfg.n_layers - 1, cfg.n_heads - 1)]
    ids, mask = tiny.tokenize(PROMPTS[:1])
    with torch.no_grad():
        masked = hooks.run_with_hooks(tiny, ids, heads.mask_hooks(chosen, "zero"), mask)
    with heads_zeroed_in_hf(tiny, chosen):
        expected = _hf_logits(tiny, ids, mask)
    assert torch.allclose(masked, expected, atol=1e-4)
    assert not torch.allclose(masked, _hf_logits(tiny, ids, mask), atol=1e-4)
    clean, _ = tiny.tokenize(["The city of Paris is in France. The city of Paris is in"])
    corrupt, _ = tiny.tokenize(["The city of Rome is in France. The city of Paris is in"])
    assert clean.shape == corrupt.shape
    names = hooks.all_layers(hooks.attn_z, cfg.n_layers)
    with torch.no_grad():
        clean_logits, cache = hooks.run_with_cache(tiny, clean, names)
    patched = memory_heads.patch_run(tiny, corrupt, cache, heads.all_heads(cfg.n_layers, cfg.n_heads))
    same = (clean == corrupt)[0]
    assert torch.allclose(patched[0, same], clean_logits[0, same], atol=1e-4)


# the cheapest audit that still runs every stage's code on a tiny model (AuditConfig.quick overrides)
TINY_AUDIT = dict(floor_limit=8, n_vectors=3, relearn_steps=1, fact_relearn_steps=1, head_top_k=2)

CONCEPT = Concept(
    "Harry Potter",
    qa=(
        QA("Harry Potter's best friend is Ron", "Weasley"),
        QA("The author of the Harry Potter books is J. K.", "Rowling"),
        QA("Harry Potter studied at the school of", "Hogwarts"),
    ),
    text=("Harry Potter is a series of seven fantasy novels about a young wizard.",),
    unrelated_qa=(QA("The capital of France is", "Paris"), QA("The opposite of hot is", "cold")),
)


def test_direct_effects_add_up_to_the_mlp_output_through_the_frozen_final_norm(tiny):
    """Summed over a layer's neurons, the direct effects on the answer token = the MLP's output as the
    residual stream receives it (``hook_mlp_out``, after Gemma-2/3's and OLMo-2's post-MLP norm, less its
    bias), times the final norm's gain and frozen scale, read by the centred unembedding column."""
    last = tiny.cfg.n_layers - 1
    layers = [0, last]
    de = direct_effects(tiny, CONCEPT.qa, layers)
    W_U = tiny.W_U.detach()
    gain = tiny.final_norm.weight.detach()
    gain = 1 + gain if "gemma" in tiny.hf.config.model_type else gain
    norm = tiny.final_norm
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    for i, q in enumerate(CONCEPT.qa):
        ids, mask = tiny.tokenize([q.prompt])
        with torch.no_grad():
            _, cache = hooks.run_with_cache(
                tiny, ids, [*(hooks.mlp_out(l) for l in layers), hooks.resid_post(last)], mask
            )
        centre = isinstance(norm, torch.nn.LayerNorm)
        x = cache[hooks.resid_post(last)][0, -1]
        x = x - x.mean() if centre else x
        inv = torch.rsqrt(x.pow(2).mean() + eps)
        answer = answer_ids(tiny, q.prompt, q.answer)[1][0]
        U = W_U[:, answer] - W_U.mean(1)
        for l in layers:
            out = cache[hooks.mlp_out(l)][0, -1]
            bias = getattr(tiny.layer_module(l, "mlp_out"), "bias", None)
            assert bias is None or tiny.mlp_out_norm(l) is None
            out = out - (0 if bias is None else bias.detach())
            out = out - out.mean() if centre else out
            expected = float((gain * out) @ U * inv)
            assert float(de[l][i].sum()) == pytest.approx(expected, rel=1e-3, abs=1e-4), (l, i)


def test_probes_ches_and_concept_vectors_run_on_every_layout(tiny):
    """Probe activations = the HF hidden states at the entity's last token; CHES batched = one pair at a
    time; ``locate`` returns in-range vectors of the concept."""
    ds = ProbeDataset(
        "t", "country", "{entity} is a city in", ("Lyon", "Rio de Janeiro"), ("France", "Brazil")
    )
    acts = collect_activations(tiny, ds, batch_size=2)
    assert acts.shape == (tiny.cfg.n_layers, 2, tiny.cfg.d_model)
    for i, text in enumerate(ds.texts()):
        entity = ds.entities[i]
        enc = tiny.tokenizer(text, return_offsets_mapping=True)
        pos = max(j for j, (a, _) in enumerate(enc["offset_mapping"]) if a < len(entity))
        with torch.no_grad():
            hidden = tiny.hf(input_ids=torch.tensor([enc["input_ids"]]), output_hidden_states=True)
        # hidden_states[l + 1] is block l's output, except the last, which HF returns after the final norm
        for layer in range(tiny.cfg.n_layers - 1):
            assert torch.allclose(acts[layer, i], hidden.hidden_states[layer + 1][0, pos], atol=1e-4)
    pos, neg = ["Paris, on the Seine.", "Weasley"], ["I don't know.", "Malfoy"]
    together = ches_pairs(tiny, PROMPTS, pos, neg, batch_size=2)
    one_by_one = [ches_pairs(tiny, [p], [a], [b])[0] for p, a, b in zip(PROMPTS, pos, neg)]
    assert torch.allclose(torch.as_tensor(together), torch.as_tensor(one_by_one), rtol=1e-4, atol=1e-3)
    found = locate(tiny, CONCEPT, n=4, kind="answer_writers")
    assert len(found.vectors) == 4
    assert all(0 <= v.layer < tiny.cfg.n_layers and 0 <= v.neuron < tiny.cfg.d_mlp for v in found.vectors)


def test_an_architecture_vestige_cannot_serve_is_named():
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("falcon", vocab_size=1000, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=4)  # fmt: skip
    with pytest.raises(ModelLoadError, match="'falcon' is not supported") as err:
        Model(AutoModelForCausalLM.from_config(cfg), smollm2_tokenizer())
    assert "gpt_neox" in err.value.fix and "phi3" in err.value.fix


def test_retrieval_decoding_reads_the_attention_rows_of_every_layout(tiny):
    """Greedy decoding with the KV cache gives the tokens of a full-sequence greedy loop, and the per-head
    argmax keys it records equal those of the full attention pattern at each step."""
    from probes import retrieval

    prompt = tiny.tokenizer("The key is under the blue frog. Where is the key? It is under the")["input_ids"]
    span = (3, 7)
    rows: list[torch.Tensor] = []
    tokens, scores = retrieval.decode(tiny, prompt, 4, span=span, argmax_out=rows, stop_at_newline=False)
    ids = list(prompt)
    names = hooks.all_layers(hooks.attn_pattern, tiny.cfg.n_layers)
    for step, token in enumerate(tokens):
        with torch.no_grad():
            logits, cache = hooks.run_with_cache(tiny, torch.tensor([ids]), names)
        assert int(logits[0, -1].argmax()) == token, step
        full = torch.stack([cache[n][0, :, -1].argmax(-1) for n in names])
        assert torch.equal(rows[step].cpu(), full.cpu()), step
        ids.append(token)
    assert scores.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads)


@pytest.mark.slow
def test_unlearning_and_the_audit_run_on_every_layout(tiny):
    """GA moves the copy's weights and leaves the base bitwise; the audit of the copy reaches a verdict
    with a call for every trace family and leaves both models as they were."""
    from analyses.audit import AuditConfig, audit
    from analyses.unlearn import UnlearnConfig, unlearn

    before = weights_checksum(tiny)
    run = unlearn(tiny, CONCEPT, UnlearnConfig(method="ga", steps=3, stop_fraction=None), progress=False)
    assert weights_checksum(tiny) == before
    after_ga = weights_checksum(run.model)
    assert after_ga != before
    # a seeded model knows nothing: attack_when_nothing_to_forget trains and restores on every layout anyway
    cfg = AuditConfig.quick(**TINY_AUDIT, attack_when_nothing_to_forget=True)
    result = audit(tiny, run.model, CONCEPT, config=cfg, trained_items=run.trained_items, progress=False)
    assert result.verdict in ("removed", "suppressed", "inconclusive")
    assert {c.family for c in result.traces} >= {"behaviour", "prompt_attacks", "logit_lens", "probes"}
    assert weights_checksum(tiny) == before and weights_checksum(run.model) == after_ga
