#!/usr/bin/env python
"""Write a seeded Llama checkpoint with SmolLM2's tokenizer and layer layout, wider by a factor, to measure
how the audit's memory scales with the parameter count (``scripts/audit_memory.py --base``).

    python scripts/seeded_llama.py --width 2 --out out/seeded_llama_x2

Width factor w multiplies d_model (576), d_mlp (1536) and the head count (9 query / 3 key-value heads of
64 dimensions); the 30 layers, the vocabulary and the tokenizer stay SmolLM2's, so every concept file
validates on it. Weights are drawn from the config's own initializer under ``torch.manual_seed(seed)``
and saved as safetensors. A seeded model knows no concept: its audit ends "nothing to forget", but with
``AuditConfig(attack_when_nothing_to_forget=True)`` (which ``audit_memory.py`` sets) every stage still runs on
weights of the chosen size, which is what the measurement needs.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=2, help="factor on d_model, d_mlp and the heads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import torch
    from transformers import LlamaForCausalLM

    from analyses.plan import _smollm2_config
    from probes.model import smollm2_tokenizer
    from probes.results import atomic_dir

    cfg = _smollm2_config()
    w = args.width
    cfg.hidden_size *= w
    cfg.intermediate_size *= w
    cfg.num_attention_heads *= w
    cfg.num_key_value_heads *= w
    cfg.head_dim = 64
    torch.manual_seed(args.seed)
    hf = LlamaForCausalLM(cfg).eval()
    with atomic_dir(args.out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        smollm2_tokenizer().save_pretrained(tmp)
    n = sum(t.numel() for t in hf.parameters())
    print(f"{args.out}: {n:,} parameters, d_model {cfg.hidden_size}, d_mlp {cfg.intermediate_size}")


if __name__ == "__main__":
    main()
