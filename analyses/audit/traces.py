"""Per-item values of every trace family on three item sets: the forget concept, a control (facts the base
knows that the method did not target) and a knowledge floor (facts the base never knew).

Each function returns plain lists (one value per item, JSON-ready) so that the rule
(``analyses.audit.rule``) can put bootstrap intervals on them and the stage cache can store them. The
same measurement is applied to the three sets, so the floor is the chance level of that measurement: what
it reads on knowledge that was never there.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from analyses.behaviour import attack_scores, fact_relearned, relearn_tokens, relearned
from probes import hooks
from probes.data import QA, Concept
from probes.heads import mask_hooks
from probes.memory_heads import Conflict, build_conflicts, metric
from probes.model import Model
from probes.qa import answer_ids, score_qa

if TYPE_CHECKING:
    from analyses.sampling import SamplingConfig

SETS = ("forget", "control", "floor")


@dataclass(frozen=True)
class ItemSets:
    """The three item sets of one audit. ``control`` and ``floor`` carry the forget concept's name (an
    attack that names the concept names it for every set: the same measurement) and their own text."""

    forget: Concept
    control: Concept
    floor: Concept

    def qa(self, which: str) -> tuple[QA, ...]:
        return getattr(self, which).qa

    def sizes(self) -> dict[str, int]:
        return {s: len(self.qa(s)) for s in SETS}


def item_sets(
    base: Model,
    concept: Concept,
    control_pool: Sequence[QA],
    floor: Concept,
    *,
    limit: int = 48,
    floor_limit: int = 0,
    seed: int = 0,
) -> ItemSets:
    """The control is the part of ``control_pool`` the base answers (greedy, as the forget items are
    scored), minus the concept's own prompts, at most ``limit`` items in pool order. The floor is
    ``floor``'s facts, or a seeded sample of ``floor_limit`` of them in their order (0: all)."""
    own = {q.prompt for q in concept.qa}
    seen: set[str] = set()
    pool = []
    for q in control_pool:
        if q.prompt not in own and q.prompt not in seen:
            seen.add(q.prompt)
            pool.append(q)
    known = []
    if pool:
        s = score_qa(base, pool)
        known = [q for q, ok in zip(pool, s.correct, strict=True) if ok][:limit]
    name = concept.concept
    floor_qa = tuple(floor.qa)
    if 0 < floor_limit < len(floor_qa):
        keep = np.sort(np.random.default_rng(seed).choice(len(floor_qa), floor_limit, replace=False))
        floor_qa = tuple(floor_qa[i] for i in keep)
    return ItemSets(
        forget=concept,
        control=Concept(name, tuple(known), (), (), source="control"),
        floor=Concept(name, floor_qa, tuple(floor.text), (), source=floor.source or "floor"),
    )


def _correct(scores) -> list[float]:
    return [float(c) for c in scores.correct]


Known = dict[str, dict[str, list]]  # attack name ("none": plain) -> {"correct": [...], "completions": [...]}


def scored_items(s) -> dict[str, list]:
    """A ``QAScores`` as the per-item values the stages store: correctness (0/1) and completions."""
    return {"correct": _correct(s), "completions": list(s.completions)}


def behaviour_values(
    model: Model, sets: ItemSets, *, batch_size: int = 16, forget: Known | None = None
) -> dict[str, Any]:
    """Greedy correctness per item, and the completions. ``forget``: the forget items' values already
    measured the same way (the audit's behaviour stage), read instead of generated again."""
    out: dict[str, Any] = {}
    for which in SETS:
        qa = sets.qa(which)
        if which == "forget" and forget is not None:
            got = forget["none"]
        else:
            got = (
                scored_items(score_qa(model, qa, batch_size=batch_size))
                if qa
                else {"correct": [], "completions": []}
            )
        out[which] = got["correct"]
        out[f"{which}_completions"] = got["completions"]
    return out


def attack_values(
    model: Model,
    sets: ItemSets,
    attacks: Sequence[str],
    *,
    batch_size: int = 16,
    context_chars: int = 1200,
    forget: Known | None = None,
    sampling: SamplingConfig | None = None,
) -> dict[str, Any]:
    """Per item: answered under at least one of ``attacks`` (the battery's success, as an attacker who
    tries them all would see it). ``by_attack`` keeps each attack's own per-item values on the three sets
    and ``seconds`` the time each took here; the forget items' completion under each attack is kept;
    ``forget`` as in ``behaviour_values``."""
    import time

    out: dict[str, Any] = {"attacks": list(attacks)}
    by_attack: dict[str, dict[str, list[float]]] = {a: {} for a in attacks}
    seconds = dict.fromkeys(attacks, 0.0)
    for which in SETS:
        qa = sets.qa(which)
        hit = np.zeros(len(qa), dtype=bool)
        for a in attacks:
            if not qa:
                by_attack[a][which] = []
                continue
            t0 = time.perf_counter()
            if which == "forget" and forget is not None:
                got = forget[a]
            else:
                got = scored_items(
                    attack_scores(
                        model,
                        getattr(sets, which),
                        a,
                        batch_size=batch_size,
                        context_chars=context_chars,
                        sampling=sampling,
                        # the control is other concepts' facts: some may lack a reverse or translation
                        require=which != "control",
                    )
                )
            seconds[a] += time.perf_counter() - t0
            hit |= np.array(got["correct"], dtype=bool)
            by_attack[a][which] = [float(c) for c in got["correct"]]
            if which == "forget":
                out[f"forget_completions_{a}"] = got["completions"]
        out[which] = hit.astype(float).tolist()
    return {**out, "by_attack": by_attack, "seconds": {a: round(t, 3) for a, t in seconds.items()}}


def relearn_values(
    model: Model, sets: ItemSets, *, steps: int, lr: float, seed: int, params: str = "all"
) -> dict[str, Any]:
    """The model relearned on the concept's answer-free text answers the forget and the control items; the
    model relearned the same way on as many tokens of the floor's answer-free text (its first ones)
    answers the floor items, so forget minus floor compares the same fine-tuning on the same amount of
    text (``tokens``: what each side trained on; the floor trains on less only where its text is shorter).
    Empty when a set has no text. ``params``: which parameters train (``analyses.relearning.PARAMS``), in
    place, restored exactly."""
    out: dict[str, Any] = {s: [] for s in SETS}
    budget = relearn_tokens(model, sets.forget) or None  # no forget text: the floor's whole text
    floor_tokens = relearn_tokens(model, sets.floor)
    out["tokens"] = {"forget": budget or 0, "floor": min(floor_tokens, budget or floor_tokens)}
    if budget:
        torch.manual_seed(seed)
        with relearned(model, sets.forget, steps=steps, lr=lr, seed=seed, params=params) as work:
            out["forget"] = _correct(score_qa(work, sets.forget.qa))
            if sets.control.qa:
                out["control"] = _correct(score_qa(work, sets.control.qa))
    if floor_tokens:
        torch.manual_seed(seed)
        kw = dict(steps=steps, lr=lr, seed=seed, params=params, max_tokens=budget)
        with relearned(model, sets.floor, **kw) as work:
            out["floor"] = _correct(score_qa(work, sets.floor.qa))
    return out


def fact_relearn_values(
    model: Model,
    sets: ItemSets,
    trained: Sequence[QA] = (),
    *,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 16,
    params: str = "all",
) -> dict[str, Any]:
    """Deeb & Roger's (2024) retrain-on-T, test-on-V, on the three sets (``fit_and_test``): each fold's
    scorer is ``model`` fine-tuned (in place, restored afterwards) for ``steps`` AdamW steps on that fold's facts (``params``:
    which parameters train, ``analyses.relearning.PARAMS``)."""

    @contextmanager
    def fit(facts: Sequence[QA]):
        torch.manual_seed(seed)
        with fact_relearned(model, facts, steps=steps, lr=lr, seed=seed, params=params) as work:
            yield lambda items: score_qa(work, items, batch_size=batch_size)

    return fit_and_test(sets, trained, fit, seed=seed)


def soft_prompt_values(
    model: Model,
    sets: ItemSets,
    trained: Sequence[QA] = (),
    *,
    config: Any,
    batch_size: int = 16,
) -> dict[str, Any]:
    """The soft-prompt attack (``analyses.soft_prompt``) as a retrain-on-T, test-on-V (``fit_and_test``):
    each fold's scorer is ``model`` with input vectors fitted on that fold's facts (``config``: a
    ``SoftPromptConfig``; its seed also draws the folds) placed before each question. ``losses`` keeps the
    forget prompt's fitting curve."""
    from analyses.soft_prompt import fit_soft_prompt, soft_prompt_scores

    curves: list[list[float]] = []

    @contextmanager
    def fit(facts: Sequence[QA]):
        prompt = fit_soft_prompt(model, facts, config)
        curves.append(list(prompt.losses))
        yield lambda items: soft_prompt_scores(model, prompt, items, batch_size=batch_size)

    out = fit_and_test(sets, trained, fit, seed=config.seed)
    out["losses"] = curves[0] if curves else []
    return out


def fit_and_test(sets: ItemSets, trained: Sequence[QA], fit, *, seed: int) -> dict[str, Any]:
    """Retrain on T, test on V (Deeb & Roger 2024) for an attack ``fit(facts)``, a context manager that
    yields a scorer (a scorer maps items to ``QAScores``; the attack is undone on leaving it). Forget: the scorer fitted on ``trained`` (the facts the unlearning run trained
    on) answers every forget item; without them, two seeded halves of the forget items, each answered by
    the scorer fitted on the other half. Control: the (first) forget scorer answers them (what the attack
    does to facts it was not fitted on). Floor: a scorer fitted on a seeded sample of as many floor facts
    as the forget scorer saw (at most half the floor) answers the rest: facts never known, so what comes
    back there the attack taught. Every value comes from a scorer that never saw that item;
    ``forget_completions`` are the forget scorer's."""
    forget = list(sets.forget.qa)
    n = len(forget)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {s: [] for s in SETS} | {"forget_completions": [], "trained_on": 0}
    if trained:
        folds = [(list(trained), np.arange(n))]
    elif n >= 2:
        perm = rng.permutation(n)
        a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
        folds = [([forget[i] for i in a], b), ([forget[i] for i in b], a)]
    else:
        return out
    correct = np.zeros(n)
    completions = [""] * n
    for k, (facts, test) in enumerate(folds):
        with fit(facts) as score:
            s = score([forget[i] for i in test])
            correct[test] = s.correct
            for i, c in zip(test, s.completions, strict=True):
                completions[int(i)] = c
            if k == 0 and sets.control.qa:
                out["control"] = _correct(score(sets.control.qa))
    out.update(forget=correct.tolist(), forget_completions=completions, trained_on=len(folds[0][0]))
    floor = list(sets.floor.qa)
    k = min(len(folds[0][0]), len(floor) // 2)
    if k >= 1:
        on = set(rng.choice(len(floor), k, replace=False).tolist())
        with fit([floor[i] for i in sorted(on)]) as score:
            out["floor"] = _correct(score([q for i, q in enumerate(floor) if i not in on]))
        out["floor_trained_on"] = k
    return out


@torch.no_grad()
def quantized_base(
    base: Model,
    sets: ItemSets,
    *,
    bits: int = 4,
    groups: Sequence[int] = (128, 64, 32),
    keep: float = 0.9,
    batch_size: int = 16,
    full_forget: Sequence[float] | None = None,
) -> dict[str, Any]:
    """The quantization attack's setting, chosen on the base: the first of ``groups`` (coarsest first) at
    which the base quantized to ``bits`` bits keeps ``keep`` of its full-precision accuracy on the forget
    and control items (an attack that ruins the model shows nothing), and the quantized base's per-item
    correctness on the three sets there. ``group_size`` is None when no group size keeps it; ``search``
    has the accuracy at every size tried. ``full_forget``: the base's full-precision correctness on the
    forget items, already measured (the behaviour stage); the control items are the ones the base answers,
    so only the forget items would need scoring again."""
    from analyses.quantization import QuantizationConfig, quantized

    forget, control = list(sets.forget.qa), list(sets.control.qa)
    known = forget + control
    if full_forget is None:
        full_forget = _correct(score_qa(base, forget, batch_size=batch_size)) if forget else []
    full = float(np.mean([*full_forget, *[1.0] * len(control)])) if known else float("nan")
    out: dict[str, Any] = {
        "bits": bits,
        "group_size": None,
        "keep": keep,
        "full_accuracy": full,
        "search": [],
    }
    for g in groups:
        with quantized(base, QuantizationConfig(bits, g)) as info:
            s = score_qa(base, known, batch_size=batch_size) if known else None
            acc = s.accuracy if s is not None else float("nan")
            out["search"].append({"group_size": g, "accuracy": acc, "relative_error": info.relative_error})
            if s is None or acc < keep * full:
                continue
            correct = _correct(s)
            out.update(group_size=g, forget=correct[: len(forget)], control=correct[len(forget) :])
            floor = sets.qa("floor")
            out["floor"] = _correct(score_qa(base, floor, batch_size=batch_size)) if floor else []
            break
    return out


@torch.no_grad()
def quantized_values(
    model: Model, sets: ItemSets, *, bits: int, group_size: int, batch_size: int = 16
) -> dict[str, Any]:
    """Greedy correctness per item of ``model`` with its block weights rounded to ``bits`` bits in groups
    of ``group_size`` (``analyses.quantization.quantized``: restored bitwise afterwards), and the forget
    items' completions."""
    from analyses.quantization import QuantizationConfig, quantized

    out: dict[str, Any] = {"bits": bits, "group_size": group_size}
    with quantized(model, QuantizationConfig(bits, group_size)) as info:
        for which in SETS:
            qa = sets.qa(which)
            got = scored_items(score_qa(model, qa, batch_size=batch_size)) if qa else None
            out[which] = got["correct"] if got else []
            if which == "forget":
                out["forget_completions"] = got["completions"] if got else []
    out["relative_error"] = info.relative_error
    return out


@torch.no_grad()
def _last_resid(model: Model, items: Sequence[QA], *, batch_size: int = 16) -> torch.Tensor:
    """``[item, layer, d_model]``: the residual stream after every layer at each prompt's last token."""
    names = [hooks.resid_post(l) for l in range(model.cfg.n_layers)]
    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        ids, mask = model.pad([answer_ids(model, q.prompt, q.answer)[0] for q in chunk], padding_side="left")
        _, cache = hooks.run_with_cache(model, ids, names, mask, logits_to_keep=1)
        out.append(torch.stack([cache[n][:, -1].float().cpu() for n in names], dim=1))
    return torch.cat(out) if out else torch.zeros(0, model.cfg.n_layers, model.cfg.d_model)


@torch.no_grad()
def lens_values(model: Model, sets: ItemSets, *, top_k: int = 10, batch_size: int = 16) -> dict[str, Any]:
    """Per item: the answer's first token is among the ``top_k`` most likely at some inner layer (the logit
    lens: final norm and unembedding applied to the residual stream)."""
    if top_k < 1:
        raise ValueError(f"lens top_k must be at least 1, got {top_k}: an answer ranks in the top 1 or more")
    from probes.lens import logit_lens

    out: dict[str, Any] = {}
    for which in SETS:
        qa = sets.qa(which)
        if not qa:
            out[which] = []
            continue
        r = logit_lens(model, [q.prompt for q in qa], [q.answer for q in qa], batch_size=batch_size)
        out[which] = (r.rank[:, :-1].min(axis=1) < top_k).astype(float).tolist()
    return out


def probe_layer(base: Model, sets: ItemSets, *, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """The layer where a linear probe tells the base's control items (known) from the floor (never known)
    best, by cross-validated accuracy on the base: chosen on the base so that nothing of the unlearned
    model tunes it."""
    acc = _known_probe_cv(_last_resid(base, sets.control.qa), _last_resid(base, sets.floor.qa), folds, seed)
    return {"layer": int(np.argmax(acc)), "cv_accuracy_by_layer": [float(a) for a in acc]}


def _known_probe_cv(ctrl: torch.Tensor, floor: torch.Tensor, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X = torch.cat([ctrl, floor]).numpy()
    y = np.r_[np.ones(len(ctrl)), np.zeros(len(floor))]
    cv = StratifiedKFold(n_splits=min(folds, len(ctrl), len(floor)), shuffle=True, random_state=seed)
    return np.array([cross_val_score(_probe(), X[:, l], y, cv=cv).mean() for l in range(X.shape[1])])


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))


def probe_values(
    model: Model, sets: ItemSets, layer: int, *, folds: int = 5, seed: int = 0
) -> dict[str, Any]:
    """A "known fact" probe fitted on ``model`` itself at ``layer``: logistic regression from the last
    prompt token's residual stream to known (control) vs never known (floor). Per item: its probability of
    "known"; control and floor items scored out of fold (never by a probe that saw them), forget items by
    the probe fitted on all control and floor items (it never saw a forget item)."""
    from sklearn.model_selection import StratifiedKFold

    ctrl = _last_resid(model, sets.control.qa)[:, layer].numpy()
    flo = _last_resid(model, sets.floor.qa)[:, layer].numpy()
    fgt = _last_resid(model, sets.forget.qa)[:, layer].numpy()
    X = np.concatenate([ctrl, flo])
    y = np.r_[np.ones(len(ctrl)), np.zeros(len(flo))]
    oof = np.zeros(len(y))
    cv = StratifiedKFold(n_splits=min(folds, len(ctrl), len(flo)), shuffle=True, random_state=seed)
    for train, test in cv.split(X, y):
        oof[test] = _probe().fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    full = _probe().fit(X, y)
    return {
        "layer": layer,
        "forget": full.predict_proba(fgt)[:, 1].tolist(),
        "control": oof[: len(ctrl)].tolist(),
        "floor": oof[len(ctrl) :].tolist(),
    }


def conflicts_of(base: Model, sets: ItemSets, pool: Sequence[QA]) -> dict[str, list[Conflict]]:
    """Knowledge conflicts (``probes.memory_heads.build_conflicts``) of each set's items; counterfactual
    answers come from the same set and ``pool``."""
    out = {}
    for which in SETS:
        own = {q.prompt for q in sets.qa(which)}
        made = build_conflicts(base, list(sets.qa(which)) + list(pool)) if own else []
        out[which] = [c for c in made if c.prompt in own]
    return out


@torch.no_grad()
def memory_head_values(
    model: Model,
    conflicts: dict[str, list[Conflict]],
    heads: Sequence[tuple[int, int]],
    *,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Per conflict: how much the memory heads raise logit(memory answer) - logit(context answer), i.e. the
    metric minus the metric with those heads' outputs zeroed (PH3's pruning, per item)."""
    prune = mask_hooks([tuple(h) for h in heads], "zero")
    out: dict[str, Any] = {}
    for which, items in conflicts.items():
        vals: list[float] = []
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            ids, mask = model.tokenize([c.clean_prompt for c in chunk], padding_side="left")
            mem = torch.tensor([c.memory_token for c in chunk], device=ids.device)
            ctx = torch.tensor([c.context_token for c in chunk], device=ids.device)
            clean = metric(hooks.run_with_hooks(model, ids, [], mask, logits_to_keep=1), mem, ctx)
            pruned = metric(hooks.run_with_hooks(model, ids, prune, mask, logits_to_keep=1), mem, ctx)
            vals += (clean - pruned).float().cpu().tolist()
        out[which] = vals
    return out


@torch.no_grad()
def _neuron_acts(model: Model, items: Sequence[QA], refs: Sequence[tuple[int, int]]) -> np.ndarray:
    """``[item, vector]``: each value vector's coefficient (the MLP's hidden activation) at the last prompt
    token."""
    layers = sorted({l for l, _ in refs})
    names = [hooks.mlp_post(l) for l in layers]
    out = []
    for start in range(0, len(items), 16):
        chunk = items[start : start + 16]
        ids, mask = model.pad([answer_ids(model, q.prompt, q.answer)[0] for q in chunk], padding_side="left")
        _, cache = hooks.run_with_cache(model, ids, names, mask, logits_to_keep=1)
        out.append(np.stack([cache[hooks.mlp_post(l)][:, -1, n].float().cpu().numpy() for l, n in refs], 1))
    return np.concatenate(out) if out else np.zeros((0, len(refs)))


def activation_scale(base: Model, sets: ItemSets, refs: Sequence[tuple[int, int]]) -> list[float]:
    """Each vector's mean absolute activation on the forget prompts in the base (the unit of
    ``activation_values``)."""
    return np.abs(_neuron_acts(base, sets.forget.qa, refs)).mean(axis=0).clip(min=1e-6).tolist()


def activation_values(
    model: Model, sets: ItemSets, refs: Sequence[tuple[int, int]], scale: Sequence[float]
) -> dict[str, Any]:
    """Per item: the located vectors' mean activation at the last prompt token, each in units of its mean
    absolute activation on the forget prompts in the base (1: fires as in the base)."""
    s = np.asarray(scale)
    return {w: (_neuron_acts(model, sets.qa(w), refs) / s).mean(axis=1).tolist() for w in SETS if sets.qa(w)}


def vector_values(
    base: Model, unlearned: Model, refs: Sequence[tuple[int, int]], *, n_control: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Cosine between base and unlearned of: the located value vectors (forget); seeded random vectors of
    the same layers (control: what the method did to vectors it did not target); each located base vector
    against a random *other* vector of the same layer in the unlearned model (floor: the cosine of
    unrelated vectors)."""
    from probes.concepts import value_vectors

    rng = np.random.default_rng(seed)
    layers = sorted({l for l, _ in refs})
    Vb = {l: value_vectors(base, l).float() for l in layers}
    Vu = {l: value_vectors(unlearned, l).float() for l in layers}
    d_mlp = base.cfg.d_mlp

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    forget = [cos(Vb[l][n], Vu[l][n]) for l, n in refs]
    control, floor = [], []
    for i in range(n_control):
        l = layers[i % len(layers)]
        control.append(cos(Vb[l][(m := int(rng.integers(d_mlp)))], Vu[l][m]))
        l, n = refs[i % len(refs)]
        other = int(rng.integers(d_mlp - 1))
        floor.append(cos(Vb[l][n], Vu[l][other + (other >= n)]))
    return {"forget": forget, "control": control, "floor": floor}
