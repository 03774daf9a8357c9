#!/usr/bin/env python
"""The memory formulas of ``vestige plan`` (analyses/plan.py) against measured peaks on SmolLM2 (float32).

    python scripts/plan_calibration.py [--device cpu|cuda]

Each case runs in a fresh process (a freed heap stays in a process's RSS, so one measurement would hide
the next): the embedded SmolLM2 is loaded and its bridge built, then ``probes.memory.peak_memory``
measures the peak above the start of

- ``inference B S``: one bridge forward of B x S random tokens caching ``resid_post`` of every layer,
  then the float32 log-softmax of the logits (what the lens / scans and ``score_qa`` do), against
  ``inference(b, s)``;
- ``train B S``: a copy of the model, one AdamW step on B x S random tokens (what relearning does per
  step), against ``copy + gradients + AdamW moments (4 P B) + training(b, s)``.

It prints one row per case: measured MiB, estimated MiB and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = [("inference", 16, 512), ("inference", 16, 128), ("train", 8, 64)]


def measure(kind: str, b: int, s: int, device: str) -> dict:
    import torch

    from probes import hooks
    from probes.memory import peak_memory
    from probes.model import load_model

    model = load_model("smollm2-135m", device=device)
    _ = model.bridge
    ids = torch.randint(0, model.cfg.d_vocab, (b, s), generator=torch.Generator().manual_seed(0)).to(device)
    names = [hooks.resid_post(layer) for layer in range(model.cfg.n_layers)]
    with peak_memory(device) as peak:
        if kind == "inference":
            with torch.no_grad():
                logits, cache = hooks.run_with_cache(model, ids, names)
                logp = torch.log_softmax(logits.float(), dim=-1)
            del logits, cache, logp
        else:
            work = model.copy()
            opt = torch.optim.AdamW(list(work.hf.parameters()), lr=1e-5)
            work.hf(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    return {"bytes": peak.bytes - peak.start_bytes, "kind": peak.kind}


def estimate(kind: str, b: int, s: int) -> int:
    from analyses.plan import _inference, _shape, _training, read_config

    _, config = read_config("smollm2-135m")
    shape = _shape(config)
    if kind == "inference":
        return _inference(shape, b, s, 4)
    return 4 * shape.n_params * 4 + _training(shape, b, s, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--case", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        kind, b, s = args.case[0], int(args.case[1]), int(args.case[2])
        print(json.dumps(measure(kind, b, s, args.device)))
        return
    print(f"{'case':<18} {'measured MiB':>13} {'estimated MiB':>14} {'ratio':>6}  kind")
    for kind, b, s in CASES:
        run = subprocess.run(
            [sys.executable, __file__, "--device", args.device, "--case", kind, str(b), str(s)],
            capture_output=True,
            text=True,
            check=True,
        )
        got = json.loads(run.stdout.strip().splitlines()[-1])
        want = estimate(kind, b, s)
        print(
            f"{f'{kind} {b}x{s}':<18} {got['bytes'] / 2**20:>13.0f} {want / 2**20:>14.0f} "
            f"{want / got['bytes']:>6.2f}  {got['kind']}"
        )


if __name__ == "__main__":
    main()
