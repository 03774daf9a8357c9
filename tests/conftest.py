"""Shared fixtures: the embedded SmolLM2 and the gpt2-small architecture with seeded weights.

Tests never download: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

# Under pytest-xdist (``make test`` runs ``-n 2``) the cores are shared between the workers: each worker,
# and every command a test starts (the README's, the notebooks' kernels), gets its share of the threads
# instead of all of them, so two workers on two cores do not oversubscribe.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
os.environ["MKL_NUM_THREADS"] = str(THREADS)

from contextlib import contextmanager  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)


@contextmanager
def heads_zeroed_in_hf(model, chosen):
    """The HF modules with the heads ``chosen`` [(layer, head)] zeroed by hand: their ``d_head`` slice of
    the attention output projection's input set to 0 (the independent computation of ``hook_z`` masking)."""
    from probes import heads

    d_head = model.cfg.d_head
    handles = []
    for layer, idx in heads.by_layer(chosen).items():

        def pre(mod, args, idx=idx):
            x = args[0].clone()
            for h in idx:
                x[..., h * d_head : (h + 1) * d_head] = 0
            return (x,) + args[1:]

        handles.append(model.layer_module(layer, "attn_out").register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct (embedded GGUF, dequantized once and cached)."""
    from probes.model import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def gpt2():
    """gpt2-small architecture (default GPT2Config), seeded weights, SmolLM2 tokenizer."""
    from probes.model import load_model

    return load_model("gpt2-seeded", device="cpu", seed=0)


@pytest.fixture(scope="session")
def real_gpt2():
    """Real gpt2-small weights, only when they are in the local HuggingFace cache."""
    from probes.errors import ModelLoadError
    from probes.model import load_model

    try:
        return load_model("gpt2", device="cpu")
    except ModelLoadError as e:
        pytest.skip(
            f"real gpt2-small weights are not in the local HuggingFace cache (offline run): {e.problem}"
        )


@pytest.fixture(params=["gpt2", "smol"])
def any_model(request):
    """Each test that takes this runs on the gpt2-small architecture and on SmolLM2."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def ga_mozart(smol):
    """GA (default settings) on Wolfgang Amadeus Mozart, a concept the project never tuned on, trained on
    half its QA: ``(run, trained items, held-out items)``. Shared by the attack tests."""
    from analyses.unlearn import UnlearnConfig, unlearn
    from probes.data import load_concept

    concept = load_concept(name="Wolfgang Amadeus Mozart")
    run = unlearn(smol, concept, UnlearnConfig(method="ga"), progress=False)
    seen = set(run.trained_items)
    trained = [q for q in concept.qa if q.prompt in seen]
    held = [q for q in concept.qa if q.prompt not in seen]
    return run, trained, held
