"""``vestige plan`` (analyses/plan.py, issue #21): exact parameter counts from a config built on the meta
device, the memory formulas per stage, the fits / does-not-fit decision on given devices, and the command
line (table, --json, clear errors)."""

from __future__ import annotations

import json

import pytest

from analyses.cli import main
from analyses.plan import OVERHEAD, Device, GiB, bundled_models, count_parameters, gpus, plan, read_config
from probes.errors import ModelLoadError, VestigeError

LLAMA_3_8B = 8_030_261_248
LLAMA_2_70B = 68_976_648_192
CPU = Device("cpu", 64 * GiB, 64 * GiB, "given")


def test_the_published_configs_give_the_published_parameter_counts():
    assert {"llama-3-8b", "llama-2-70b"} <= set(bundled_models())
    _, l3 = read_config("llama-3-8b")
    assert (l3.hidden_size, l3.intermediate_size, l3.num_hidden_layers) == (4096, 14336, 32)
    assert (l3.num_attention_heads, l3.num_key_value_heads, l3.vocab_size) == (32, 8, 128256)
    assert count_parameters(l3) == LLAMA_3_8B
    _, l2 = read_config("llama-2-70b")
    assert (l2.hidden_size, l2.intermediate_size, l2.num_hidden_layers, l2.vocab_size) == (
        8192,
        28672,
        80,
        32000,
    )
    assert count_parameters(l2) == LLAMA_2_70B


def test_smollm2s_count_is_the_loaded_models(smol):
    """Its config is read from the embedded checkpoint; the tied unembedding counts once, as loaded."""
    p = plan("smollm2-135m", "fp32", devices=[CPU])
    assert p.n_params == sum(x.numel() for x in smol.hf.parameters()) == 134_515_008
    assert (p.n_layers, p.d_model, p.d_mlp, p.n_heads, p.n_kv_heads, p.d_vocab) == (
        30,
        576,
        1536,
        9,
        3,
        49152,
    )
    assert p.parameter_bytes == 4 * p.n_params


def test_stage_memory_follows_the_stated_formulas():
    p = plan("llama-3-8b", "bf16", devices=[CPU], batch_size=2, seq_len=8)
    P, B, W = LLAMA_3_8B, 2, LLAMA_3_8B * 2
    stages = {s.stage: s for s in p.stages}
    assert stages["behaviour"].weights_bytes == 2 * W and stages["behaviour"].training_bytes == 0
    # relearning trains the audited bf16 model in place (no copy) through float32 masters: its gradients
    # PB, the masters, their gradients and AdamW's two moments 16P
    assert stages["relearn"].weights_bytes == 2 * W and stages["relearn"].training_bytes == W + 16 * P
    assert stages["interventions"].weights_bytes == 2 * W  # the trace search edits the base in place
    # inference: the residual stream of every layer + five float32 vocabulary tensors + one layer's attention
    b, s, d, L, V, a = 2, 8, 4096, 32, 128256, 32
    assert (
        stages["logit_lens"].activation_bytes == B * b * s * d * (L + 1) + 20 * b * s * V + 12 * b * a * s * s
    )
    # fine-tuning: 8 windows of 64 tokens (relearning), 4 (fact relearning), checkpointed (each block keeps
    # its input, one block's intermediates at a time), in micro-batches of at most a tenth of the weights:
    # 8 windows (0.91 GB) and 4 fit whole; without checkpointing 8 windows held 4.35 GB
    per_layer = (12 * d + 4 * 14336) * B + a * 64 * (4 + B)
    whole = 8 * 64 * (L * d * B + per_layer + V * (B + 8))
    assert 8 * 64 * (L * per_layer + V * (B + 8)) > 4 * whole
    assert whole < W // 10 and stages["relearn"].activation_bytes == whole
    assert stages["fact_relearn"].activation_bytes == whole // 2
    assert stages["soft_prompt"].activation_bytes == whole  # 8 facts, checkpointed, not micro-batched
    # the originals of the rounded weights wait off the device (probes.stash)
    assert stages["quantization"].weights_bytes == 2 * W
    assert all(s.total_bytes == s.weights_bytes + s.training_bytes + s.activation_bytes for s in p.stages)
    assert p.peak.stage == "relearn"
    frame = p.to_frame()
    assert list(frame["stage"]) == [s.stage for s in p.stages]
    assert frame.set_index("stage").at["relearn", "total_gib"] == pytest.approx(
        stages["relearn"].total_bytes / GiB
    )
    assert "<table" in p._repr_html_() and "8,030,261,248" in p._repr_html_()
    fp32 = plan("llama-3-8b", "float32", devices=[CPU], batch_size=2, seq_len=8)
    assert {s.stage: s.weights_bytes for s in fp32.stages}["relearn"] == 2 * stages["relearn"].weights_bytes


def test_fits_on_one_gpu_on_several_and_on_none():
    one_h100 = plan("llama-3-8b", "bf16", devices=gpus("80"), seq_len=128)
    calls = {s.stage: s.fits for s in one_h100.stages}
    # two bf16 models (30 GiB) and a batch fit; every weight's gradients, float32 masters and AdamW state
    # (+135 GiB) do not
    assert calls["behaviour"] and calls["logit_lens"] and not calls["relearn"] and not one_h100.fits
    relearn = next(s for s in one_h100.stages if s.stage == "relearn")
    assert relearn.device_bytes == {"cuda:0": relearn.total_bytes + OVERHEAD["cuda"]}
    assert not relearn.fits and relearn.total_bytes > 80 * GiB
    # full-parameter relearning through float32 masters does not fit one H200; lean LoRA relearning
    # (in place, state for 21M numbers: 0.4 GB) fits one H100
    assert not plan("llama-3-8b", "bf16", devices=gpus("141"), seq_len=128).fits
    lean = plan("llama-3-8b", "bf16", devices=gpus("80"), seq_len=128, relearn_params="lora")
    lean_relearn = next(s for s in lean.stages if s.stage == "relearn")
    W = LLAMA_3_8B * 2
    assert lean.fits and lean_relearn.weights_bytes == 2 * W and lean_relearn.training_bytes < 0.05 * W
    with pytest.raises(VestigeError, match="relearning variant"):
        plan("llama-3-8b", "bf16", devices=gpus("80"), relearn_params="everything")
    # split in proportion to free memory over two GPUs: each holds half
    two = plan("llama-3-8b", "bf16", devices=gpus("2x80"), device_map="balanced", seq_len=128)
    assert two.shares == {"cuda:0": 0.5, "cuda:1": 0.5} and not two.fits
    assert plan("llama-3-8b", "bf16", devices=gpus("2x80"), device_map="balanced", relearn_params="lora").fits
    # without a map only the first GPU is used, and the plan says how to split
    single = plan("llama-3-8b", "bf16", devices=gpus("2x80"), seq_len=128)
    assert single.shares == {"cuda:0": 1.0} and not single.fits and any("balanced" in n for n in single.notes)
    # 70B in bf16 on eight H100s: the inference stages fit, relearning's copy does not
    big = plan("llama-2-70b", "bf16", devices=gpus("8x80"), device_map="balanced", seq_len=128)
    calls = {s.stage: s.fits for s in big.stages}
    assert calls["behaviour"] and calls["ches"] and not calls["relearn"] and not big.fits
    # on the CPU: the host's memory decides
    assert not plan("llama-3-8b", "fp32", devices=[Device("cpu", 16 * GiB, 12 * GiB, "given")]).fits


def test_a_json_map_shares_the_weights_by_module_and_offload_does_not_count_as_fitting(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(
        json.dumps(dict(model_type="llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, vocab_size=1000))
    )  # fmt: skip
    layout = {
        "model.embed_tokens": 0,
        "model.layers.0": 0,
        "model.layers.1": 1,
        "model.norm": 1,
        "lm_head": 1,
    }
    p = plan(str(config), devices=gpus("2x2"), device_map=json.dumps(layout))
    emb, layer = 1000 * 64, 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 96 + 2 * 64
    total = 2 * emb + 2 * layer + 64
    assert p.n_params == total
    assert p.shares == pytest.approx({"cuda:0": (emb + layer) / total, "cuda:1": (layer + 64 + emb) / total})
    assert p.fits
    offloaded = plan(str(config), devices=gpus("2x2"), device_map={**layout, "model.layers.1": "disk"})
    assert not offloaded.fits and any("offloaded" in n for n in offloaded.notes)
    with pytest.raises(ModelLoadError, match="no device for model.norm.weight"):
        plan(
            str(config),
            devices=gpus("2x2"),
            device_map={k: v for k, v in layout.items() if k != "model.norm"},
        )


def test_the_command_prints_a_table_and_json(capsys):
    assert (
        main(
            [
                "plan",
                "--model",
                "llama-2-70b",
                "--dtype",
                "bf16",
                "--gpus",
                "8x80",
                "--device-map",
                "balanced",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "68,976,648,192" in out and "relearn" in out and "audit fits: no" in out
    assert main(["plan", "--model", "llama-3-8b", "--dtype", "fp32", "--gpus", "141", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (
        data["n_params"] == LLAMA_3_8B
        and data["dtype"] == "float32"
        and data["parameter_bytes"] == 4 * LLAMA_3_8B
    )
    assert data["fits"] is False and data["peak_stage"] == "relearn"
    assert [s["stage"] for s in data["stages"]][:2] == ["behaviour", "relearn"]
    assert data["devices"][0] == {
        "name": "cuda:0",
        "total_bytes": 141 * GiB,
        "free_bytes": 141 * GiB,
        "source": "given",
    }


@pytest.mark.parametrize(
    "argv,said",
    [
        (["plan", "--model", "no-such-model"], "unknown model spec 'no-such-model'"),
        (["plan", "--model", "./missing/config.json"], "does not exist"),
        (["plan", "--model", "llama-3-8b", "--gpus", "eighty"], "is not a GPU size"),
        (["plan", "--model", "llama-3-8b", "--device", "cuda:3", "--gpus", "80"], "no such device"),
        (["plan", "--model", "llama-3-8b", "--device", "gpu"], "is not a device"),
        (
            ["plan", "--model", "llama-3-8b", "--device-map", '{"": 2}', "--gpus", "80"],
            "not among the devices",
        ),
        (["plan", "--model", "llama-3-8b", "--device-map", "{not json"], "not valid JSON"),
    ],
    ids=["unknown", "missing", "gpus", "device", "device-name", "map-gpu", "map"],
)
def test_a_bad_spec_or_option_is_refused_with_cause_and_fix(argv, said, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "cause:" in err and "fix:" in err and "Traceback" not in err, err


def test_configs_that_are_not_causal_lms_are_refused(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ModelLoadError, match="not a HuggingFace model config"):
        plan(str(bad), devices=[CPU])
    bad.write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelLoadError, match="does not know model_type"):
        plan(str(tmp_path), devices=[CPU])  # a directory: its config.json
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no config.json"):
        plan(str(tmp_path / "empty"), devices=[CPU])
    with pytest.raises(VestigeError, match="not one vestige loads"):
        plan("llama-3-8b", "int8", devices=[CPU])


def test_a_hub_id_is_read_from_the_local_cache_first_and_from_the_hub_only_online(monkeypatch):
    """``read_config("org/name")`` asks the local HuggingFace cache first and never the hub when the cache
    has it, online or not; a config missing from the cache comes from the hub only online; offline the
    error says it is not in the cache. The HF call is replaced by a fake cache and hub (no network)."""
    import transformers
    from transformers import LlamaConfig

    cached = {"org/cached": LlamaConfig(num_hidden_layers=2)}
    hub = {"org/cached": LlamaConfig(num_hidden_layers=2), "org/remote": LlamaConfig(num_hidden_layers=3)}
    calls: list[tuple[str, bool]] = []

    def from_pretrained(name, *, local_files_only=False, trust_remote_code=False, **kw):
        calls.append((name, local_files_only))
        found = (cached if local_files_only else hub).get(name)
        if found is None:
            raise OSError(f"{name} not found ({'cache' if local_files_only else 'hub'})")
        return found

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    for offline in ("0", "1"):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        calls.clear()
        assert read_config("org/cached")[1].num_hidden_layers == 2
        assert calls == [("org/cached", True)]  # the cache answered: the hub is never asked
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls.clear()
    assert read_config("org/remote")[1].num_hidden_layers == 3
    assert calls == [("org/remote", True), ("org/remote", False)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls.clear()
    with pytest.raises(ModelLoadError, match="not in the local HuggingFace cache"):
        read_config("org/remote")
    assert calls == [("org/remote", True)]
