"""What an audit measures and how hard it attacks (``AuditConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from analyses.behaviour import ATTACK_CHOICES, ATTACKS
from analyses.sampling import SamplingConfig
from analyses.soft_prompt import SoftPromptConfig
from probes.results import Result


@dataclass(frozen=True)
class AuditConfig(Result):
    n_vectors: int = 10
    attacks: tuple[str, ...] = ATTACKS  # any of ATTACK_CHOICES; "sampled" is best of sample_n samples
    sample_n: int = 8
    sample_temperature: float = 1.0
    sample_top_p: float = 0.95
    relearn_steps: int = 10
    relearn_lr: float = 3e-5
    # which parameters the relearning attack moves (``analyses.relearning.PARAMS``); every choice trains the
    # audited model itself and restores it bit for bit (``analyses.finetune.finetuned``). ``all`` turns to
    # ``lora`` (with a note) when its gradients and AdamW state would not fit the free memory
    # (``analyses.finetune.lean_unless_it_fits``); the same holds for ``fact_relearn_params``
    relearn_params: str = "all"
    # membership inference on the concept's text against the floor's (reported; ``stages._membership_stage``)
    membership: bool = True
    # Deeb & Roger's retrain-on-T, test-on-V: AdamW steps on the facts the run trained on (0: off), then the
    # held-out items (``analyses.audit.traces.fact_relearn_values``)
    fact_relearn_steps: int = 10
    fact_relearn_lr: float = 3e-5
    # which parameters fact relearning moves (``analyses.relearning.PARAMS``: all, norms, biases, layer:K, lora)
    fact_relearn_params: str = "all"
    # The soft-prompt attack (``analyses.soft_prompt``): ``soft_prompt_tokens`` input vectors fitted for
    # ``soft_prompt_steps`` Adam steps (0: off) at ``soft_prompt_lr`` on the facts the run trained on (or half
    # the audited items), then scored on the held-out items (``analyses.audit.traces.soft_prompt_values``)
    soft_prompt_steps: int = 40
    soft_prompt_tokens: int = 8
    soft_prompt_lr: float = 1e-2
    noise_scale: float = 0.1  # N(0, 0.1^2 I) as in ConceptVectors
    # The logit-lens trace: an item counts when its answer's first token ranks in the top ``lens_top_k`` at
    # some inner layer (Patil et al.'s attack, k = 10 over a 49k vocabulary). Over a small vocabulary with few
    # answers per type a type-appropriate word sits in the top 10 by chance, which the base's floor rate shows
    # (``analyses.oracle.OracleConfig`` uses 1 for the synthetic world).
    lens_top_k: int = 10
    # The quantization attack (``analyses.quantization``, Zhang et al. 2025): the unlearned model's block
    # weights rounded to ``quantize_bits`` bits (0: off) in groups of the first of ``quantize_groups``
    # (coarsest first) at which the *base* keeps ``quantize_keep`` of its full-precision accuracy on the
    # forget and control items (chosen on the base: nothing of the unlearned model tunes it).
    quantize_bits: int = 4
    quantize_groups: tuple[int, ...] = (128, 64, 32)
    quantize_keep: float = 0.9
    head_top_k: int = 5
    probe_dataset: str = "city_country"
    probe_folds: int = 5
    # Entities of the probe dataset that the unlearning targeted: their attribute is also probed by a probe
    # fitted on the other entities of the same model (``probes.linear.split_accuracy``).
    probe_forget_entities: tuple[str, ...] = ()
    seed: int = 0
    batch_size: int = 16
    context_chars: int = 1200  # concept text placed before the question by the in-context attack
    # The trace set the interventions ablate: located vectors zeroed in the *base*, ``trace_step`` at a
    # time, until its forget accuracy is at most 25% of its start (at most ``trace_max``; 0: the
    # ``n_vectors`` located ones). See ``_trace_vectors``.
    trace_step: int = 20
    trace_max: int = 320
    # Audit only the held-out items of ``Concept.split(heldout, heldout_seed)``: the same split as
    # ``vestige unlearn --heldout`` (0: every item; then the audit cannot tell forgetting from memorising).
    heldout: float = 0.0
    heldout_seed: int = 0
    # When the unlearning run's ``trained_items`` are known and every audited item is one of them, the audit
    # refuses (its forget accuracy would measure memorisation of the training items); True audits them anyway
    # and says so in the notes.
    allow_trained_items: bool = False
    # The control: at most this many facts of the control pool (the concept's unrelated QA and the retain QA)
    # that the base answers. Every interval: a percentile bootstrap over items with this many resamples.
    control_limit: int = 48
    # The floor: at most this many of its facts, a seeded sample (``seed``) in file order (0: all of them).
    floor_limit: int = 0
    bootstrap: int = 2000
    # A family is "gone" when its forget - floor difference stays, with 95% confidence, under this share of
    # the base's forget - floor difference (``analyses.audit.rule.call_family``); smaller is stricter.
    gone_margin: float = 0.5
    # A family is "present" when its difference's interval is above 0 at the family-wise level 1 - 0.05 / m
    # over the m families that can be present (Bonferroni: the verdict is suppressed when any one is, so
    # without it an oracle with 8 families would be called suppressed by chance up to 1 - 0.975^8 = 18% of the
    # time); False tests each at 95%. "Gone" needs every family, so each stays at 95%.
    family_wise: bool = True
    # When the base does not answer the audited questions above the floor (``rule.nothing_to_forget``: the
    # verdict is then inconclusive, "nothing to forget", whatever the traces read), the attacks that train or
    # round weights (relearning, fact relearning, the soft prompt, quantization), membership inference and
    # the trace search are skipped, with a note: they would take most of the audit's time to measure nothing.
    # True runs them anyway (e.g. to time or measure the memory of every stage on a seeded model).
    attack_when_nothing_to_forget: bool = False

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACK_CHOICES]
        if unknown:
            raise ValueError(f"AuditConfig.attacks holds {unknown}: the attacks are {ATTACK_CHOICES}")
        self.sampling()  # validates the sampling attack's settings
        if self.soft_prompt_steps < 0:
            raise ValueError(
                f"AuditConfig.soft_prompt_steps is {self.soft_prompt_steps}: the soft-prompt attack takes 0 "
                "(off) or more Adam steps (40 by default)"
            )
        self.soft_prompt()  # validates the soft prompt's settings
        from analyses.relearning import is_variant

        for name in ("relearn_params", "fact_relearn_params"):
            p = getattr(self, name)
            if not is_variant(p):
                raise ValueError(
                    f"AuditConfig.{name} is {p!r}: relearning moves all, norms, biases, lora or layer:K (one "
                    "block) parameters"
                )
        if self.lens_top_k < 1:
            raise ValueError(
                f"AuditConfig.lens_top_k is {self.lens_top_k}: the logit-lens trace counts an answer ranked in "
                "the top k at some inner layer, so k must be at least 1 (10 by default)"
            )
        if self.quantize_bits and (not 2 <= self.quantize_bits <= 8 or not self.quantize_groups):
            raise ValueError(
                f"AuditConfig.quantize_bits is {self.quantize_bits} with groups {self.quantize_groups}: the "
                "quantization attack rounds to 2 to 8 bits in at least one group size (4 bits, groups "
                "(128, 64, 32) by default; 0 bits turns it off)"
            )
        if any(g < 1 for g in self.quantize_groups):
            raise ValueError(
                f"AuditConfig.quantize_groups is {self.quantize_groups}: each group holds at least one weight"
            )
        if not 0 < self.quantize_keep <= 1:
            raise ValueError(
                f"AuditConfig.quantize_keep is {self.quantize_keep}: the share of the base's accuracy that "
                "the quantized base must keep is in (0, 1] (0.9 by default)"
            )

    def sampling(self) -> SamplingConfig:
        """The ``sampled`` attack's settings (seeded with ``seed``)."""
        return SamplingConfig(self.sample_n, self.sample_temperature, self.sample_top_p, self.seed)

    def soft_prompt(self) -> SoftPromptConfig:
        """The soft-prompt attack's settings (seeded with ``seed``)."""
        return SoftPromptConfig(
            n_tokens=self.soft_prompt_tokens,
            steps=self.soft_prompt_steps,
            lr=self.soft_prompt_lr,
            batch_size=8,
            seed=self.seed,
        )

    @classmethod
    def quick(cls, **overrides) -> AuditConfig:
        """A first look in a few minutes on a CPU: 5 vectors, the prefix attack, 2 relearning steps, the
        located vectors as the trace set (no trace search), 2 probe folds, 3 memory heads, 24 floor facts,
        quantization in groups of 32 only (still checked on the base), no soft prompt. Every other stage
        still runs; the full defaults attack harder, fit a soft prompt, search the trace set and the
        quantization group size, and read the whole floor."""
        quick = dict(
            n_vectors=5,
            attacks=("prefix",),
            relearn_steps=2,
            trace_max=0,
            probe_folds=2,
            head_top_k=3,
            floor_limit=24,
            quantize_groups=(32,),
            soft_prompt_steps=0,
        )
        return cls(**{**quick, **overrides})
