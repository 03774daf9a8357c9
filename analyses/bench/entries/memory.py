"""Lean training attacks (issue scale): fact relearning through a rank-8 LoRA vs fine-tuning every weight,
both on the model itself, in place and restored exactly (``analyses.finetune.finetuned``), at the same
steps on the same facts. The ratio is the full run's time over the lean one's (higher is better,
target >= 1: lean must not cost time); the detail gives each one's peak memory above what was resident
before it (host RSS on CPU, CUDA memory allocated on GPU) as a multiple of the model's parameter bytes."""

from __future__ import annotations

from analyses.bench.harness import BenchContext, Case, benchmark
from analyses.finetune import finetuned, select_parameters
from analyses.unlearn.batches import qa_examples
from probes.data import load_concept
from probes.memory import parameter_bytes, peak_memory
from probes.qa import score_qa


@benchmark("lean_vs_full_fact_relearning", target=1.0, higher_is_better=True)
def lean_relearning(ctx: BenchContext) -> Case:
    model = ctx.model
    concept = load_concept(name="Wolfgang Amadeus Mozart")
    facts, tests = list(concept.qa[::2]), list(concept.qa[1::2])
    steps = 3 if ctx.quick else 10

    def relearn(params: str, lr: float):
        def run():
            kw = dict(steps=steps, lr=lr, batch_size=4, seed=0, desc="bench", params=params)
            with finetuned(model, lambda work: qa_examples(work, facts), **kw) as work:
                return score_qa(work, tests[:4]).accuracy

        return run

    full, lean = relearn("all", 3e-5), relearn("lora", 1e-4)
    pbytes = parameter_bytes(model.hf)
    work = model.copy()
    n_all = sum(p.numel() for p in work.hf.parameters())
    n_lora = sum(p.numel() for p in select_parameters(work, "lora"))
    del work
    extra = {}
    # lean first: heap the full run frees can stay in the process and would hide the lean run's growth
    for name, fn in (("lean", lean), ("full", full)):
        with peak_memory(model.device) as peak:
            fn()
        extra[name] = (peak.bytes - peak.start_bytes) / pbytes
    return Case(
        full,
        lean,
        f"{steps} AdamW steps on {len(facts)} facts; trained numbers: full {n_all}, lean {n_lora}; peak "
        f"memory above the resident model: full (every weight's gradients and AdamW state) {extra['full']:.2f}x "
        f"the parameter bytes, lean (rank-8 LoRA in place) {extra['lean']:.2f}x (host RSS on CPU: in a "
        "long-lived process freed heap can hide growth; read it from a fresh `vestige bench` run)",
    )
