"""The verdict rule (``VERDICT_RULE``) applied to the measured stages."""

from __future__ import annotations


def verdict(
    behaviour: dict, vectors: dict, lens: dict, recovery: dict, interventions: dict
) -> tuple[str, list[str]]:
    """Apply ``VERDICT_RULE``; return the verdict and the reasons that decided it."""
    base_acc = behaviour["base"]["forget"]["accuracy"]
    unl_acc = behaviour["unlearned"]["forget"]["accuracy"]
    reasons = []
    if not base_acc or base_acc <= 0:
        return "inconclusive", ["the base model does not answer the concept's questions"]
    gone = unl_acc <= 0.5 * base_acc
    reasons.append(f"forget accuracy {base_acc:.2f} -> {unl_acc:.2f} ({'gone' if gone else 'not gone'})")
    attacked = {k: v for k, v in recovery["unlearned"].items() if k != "none" and v is not None and v == v}
    best_attack = max(attacked, key=attacked.get) if attacked else None
    patched = interventions["patch_vectors_from_base"]["forget_accuracy"]
    recoverable = (
        best_attack is not None and attacked[best_attack] >= 0.5 * base_acc
    ) or patched >= 0.5 * base_acc
    if best_attack is not None:
        reasons.append(f"best attack {best_attack}: forget accuracy {attacked[best_attack]:.2f}")
    reasons.append(f"patching base concept vectors back: forget accuracy {patched:.2f}")
    basis = vectors.get("basis", {"comparable": True})
    # a per-index vector comparison says something only when the two models share a neuron basis (a
    # fine-tuned copy, or a permuted one after re-alignment; not another training run)
    cos_present = bool(basis["comparable"]) and vectors["mean_cosine"] >= 0.9
    excess = lens.get("unlearned_max_inner_excess_over_decoys", 1.0)
    if "present_layers" in lens:
        lens_present = bool(lens["present_layers"])
    else:  # a lens summary without per-layer decoys: the maxima over inner layers
        lens_present = lens["unlearned_max_inner_top10_share"] >= 0.5 and excess >= 0.25
    if not basis["comparable"]:
        reasons.append(
            f"concept vectors not comparable: control neurons agree at median cosine {basis['agreement']:.2f} "
            "(the models share no neuron basis), so the vector cosine does not vote"
        )
    elif basis.get("realigned"):
        reasons.append(
            f"the unlearned model's neurons were re-aligned to the base (a permutation: control cosine "
            f"{basis['agreement']:.2f} -> {basis['agreement_after']:.2f})"
        )
    reasons.append(
        f"concept vectors mean cosine {vectors['mean_cosine']:.3f}; logit lens top-10 share inside "
        f"{lens['unlearned_max_inner_top10_share']:.2f} (layer {lens['best_inner_layer']}), "
        f"{excess:+.2f} over same-type decoys"
    )
    present = cos_present or lens_present
    if not gone:
        return "inconclusive", reasons + ["the unlearned model still answers: nothing to audit"]
    if recoverable or present:
        return "suppressed", reasons
    return "removed", reasons
