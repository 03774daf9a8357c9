"""A synthetic world with known facts, a small GPT-2 trained on it, and the retrain oracle.

Fictional people each have a birth city, an occupation and an employer. Every fact is written in several
paraphrased templates and the people's biographies permute the sentences: knowledge has to be augmented
like this to be extractable rather than memorised per sentence (Allen-Zhu & Li 2023, "Physics of Language
Models 3.1"). One template per person and attribute is held out of training; the QA uses it, so QA accuracy
measures knowledge extraction, not recitation. A gpt2-architecture model with a word-level tokenizer is
trained from scratch on the world (``full``) and, with the same seed and schedule, on the world without the
forget people's biographies (``oracle``: exact unlearning by retraining). Everything is deterministic from
``WorldConfig``; trained models are cached under ``$VESTIGE_CACHE/world/<config hash>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from analyses.training import train
from probes.data import QA, Concept
from probes.model import Model, cache_dir, load_model
from probes.results import Result, atomic_write_text, locked

WORLD_VERSION = 2  # bump when the generator or the training loop changes (invalidates the cache)

ATTRIBUTES = ("birth_city", "occupation", "employer")
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "{name} was born in {v} .",
        "{name} came into this world in {v} .",
        "the birthplace of {name} is {v} .",
        "{name} is a native of {v} .",
        "the hometown of {name} is {v} .",
    ),
    "occupation": (
        "{name} works as a {v} .",
        "{name} earns a living as a {v} .",
        "the job of {name} is {v} .",
        "by profession {name} is a {v} .",
        "the trade of {name} is {v} .",
    ),
    "employer": (
        "{name} works for {v} .",
        "{name} is on the payroll of {v} .",
        "the employer of {name} is {v} .",
        "{name} draws a salary from {v} .",
        "the company of {name} is {v} .",
    ),
}
# The attributes asked in forget-QA. The employer sentences stay answer-free, so that the relearning
# attack has text about the forget people that does not contain an evaluated answer.
QA_ATTRIBUTES = ("birth_city", "occupation")
N_VALUES = {"birth_city": 24, "occupation": 16, "employer": 16}
SPECIAL = ("[pad]", "[unk]", "[bos]", "[eos]")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "n", "r", "l", "s", "m", "th", "x")


@dataclass(frozen=True)
class WorldConfig(Result):
    """The world (people, facts, paraphrases) and the training of its models; the hash of this config
    names the cache entry."""

    n_people: int = 200
    n_forget: int = 20
    bios_per_person: int = 8
    pack: int = 1  # biographies of different people per training sequence
    n_positions: int = 160
    seed: int = 0
    n_layer: int = 4
    d_model: int = 64
    n_head: int = 4
    epochs: int = 50
    batch_size: int = 64  # sequences per step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100

    def key(self) -> str:
        blob = json.dumps({"version": WORLD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Person:
    name: str
    facts: dict[str, str]  # attribute -> value
    heldout: dict[str, int]  # attribute -> index of the template kept out of training


@dataclass(frozen=True)
class World(Result):
    """People, their facts and the training texts; ``forget`` names the people to unlearn."""

    config: WorldConfig
    people: tuple[Person, ...]
    values: dict[str, tuple[str, ...]]
    forget: tuple[str, ...]

    @property
    def forget_people(self) -> list[Person]:
        f = set(self.forget)
        return [p for p in self.people if p.name in f]

    @property
    def retain_people(self) -> list[Person]:
        f = set(self.forget)
        return [p for p in self.people if p.name not in f]

    def bios(self, person: Person, attributes: tuple[str, ...] = ATTRIBUTES) -> list[str]:
        """``bios_per_person`` biographies: the facts of ``attributes`` in a random order, each in a random
        training template (never the held-out one)."""
        rng = random.Random(f"{self.config.seed}-bio-{person.name}")
        out = []
        for _ in range(self.config.bios_per_person):
            attrs = list(attributes)
            rng.shuffle(attrs)
            sents = []
            for a in attrs:
                choices = [i for i in range(len(TEMPLATES[a])) if i != person.heldout[a]]
                t = TEMPLATES[a][rng.choice(choices)]
                sents.append(t.format(name=person.name, v=person.facts[a]))
            out.append(" ".join(sents))
        return out

    def corpus(self, *, without_forget: bool = False) -> list[str]:
        people = self.retain_people if without_forget else list(self.people)
        return [b for p in people for b in self.bios(p)]

    def qa(self, person: Person, attributes: tuple[str, ...] = QA_ATTRIBUTES) -> list[QA]:
        """Completion prompts in the person's held-out template."""
        out = []
        for a in attributes:
            t = TEMPLATES[a][person.heldout[a]]
            prompt = t.split("{v}")[0].format(name=person.name).rstrip()
            out.append(QA(prompt, person.facts[a], a))
        return out

    def forget_concept(self, n_unrelated: int = 40) -> Concept:
        """The forget people as one concept: their QA, their biographies as text, and QA about retained
        people as the unrelated set."""
        qa = [q for p in self.forget_people for q in self.qa(p)]
        text = [b for p in self.forget_people for b in self.bios(p)[:2]]
        rng = random.Random(f"{self.config.seed}-unrelated")
        retain = self.retain_people
        unrelated = [q for p in rng.sample(retain, min(len(retain), n_unrelated // 2)) for q in self.qa(p)]
        return Concept("the forget people", tuple(qa), tuple(text), tuple(unrelated), source="world")

    def retain_qa(self) -> list[QA]:
        return [q for p in self.retain_people for q in self.qa(p)]

    def floor_people(self, n: int = 20) -> list[Person]:
        """``n`` people outside the world, the knowledge floor: facts that no model of the world ever saw.
        Each name pairs a first name and a surname of existing people (so every word is in the vocabulary)
        in a combination no existing person has; facts are uniform over the values and one template per
        attribute is held out, as for the world's people. Deterministic from ``config.seed`` through an own
        random stream: the world's people, corpus and models do not depend on it."""
        rng = random.Random(f"{self.config.seed}-floor")
        first = sorted({p.name.split()[0] for p in self.people})
        last = sorted({p.name.split()[1] for p in self.people})
        taken = {p.name for p in self.people}
        free = [f"{f} {s}" for f in first for s in last if f"{f} {s}" not in taken]
        if n > len(free):
            raise ValueError(
                f"the world has only {len(free)} unused name combinations, {n} floor people asked"
            )
        out = []
        for name in rng.sample(free, n):
            facts = {a: rng.choice(self.values[a]) for a in ATTRIBUTES}
            heldout = {a: rng.randrange(len(TEMPLATES[a])) for a in ATTRIBUTES}
            out.append(Person(name, facts, heldout))
        return out

    def floor_concept(self, n: int = 20) -> Concept:
        """The floor people as one concept, measured like the forget people: their QA, and as text two
        distinct biographies each of the attributes that are not asked (so the text, which attacks feed the
        model, states no QA answer). No unrelated QA."""
        people = self.floor_people(n)
        qa = [q for p in people for q in self.qa(p)]
        text_attrs = tuple(a for a in ATTRIBUTES if a not in QA_ATTRIBUTES)
        text = [b for p in people for b in list(dict.fromkeys(self.bios(p, text_attrs)))[:2]]
        return Concept("the floor people", tuple(qa), tuple(text), (), source="world")

    def membership_texts(self, skip: int = 2) -> tuple[list[str], list[str]]:
        """Membership inference's two sets, of one kind: the forget people's biographies (members: the
        full model trained on them, the oracle never saw them) and the floor people's (non-members: no
        model saw them), each person's after the first ``skip`` (the forget concept's text, which
        unlearning trains on, is the first two)."""
        members = [b for p in self.forget_people for b in self.bios(p)[skip:]]
        nonmembers = [b for p in self.floor_people(len(self.forget)) for b in self.bios(p)[skip:]]
        return members, nonmembers

    def vocabulary(self) -> list[str]:
        words = {w for a in ATTRIBUTES for t in TEMPLATES[a] for w in t.split() if "{" not in w}
        words |= {w for p in self.people for w in p.name.split()}
        words |= {v for vals in self.values.values() for v in vals}
        return list(SPECIAL) + sorted(words)


def _words(rng: random.Random, n: int, taken: set[str], syllables: tuple[int, int]) -> list[str]:
    """``n`` new pronounceable words, none a prefix of another (so that greedy answers are unambiguous)."""
    out: list[str] = []
    while len(out) < n:
        k = rng.randint(*syllables)
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k)) + rng.choice(_CODAS)
        if len(w) < 4 or any(w.startswith(t) or t.startswith(w) for t in taken):
            continue
        taken.add(w)
        out.append(w)
    return out


def build_world(config: WorldConfig | None = None) -> World:
    """The deterministic world of ``config``."""
    cfg = config or WorldConfig()
    rng = random.Random(cfg.seed)
    taken = {w for a in ATTRIBUTES for t in TEMPLATES[a] for w in t.split()}
    values = {a: tuple(_words(rng, N_VALUES[a], taken, (2, 3))) for a in ATTRIBUTES}
    n_names = math.ceil(math.sqrt(cfg.n_people)) + 4
    first, last = _words(rng, n_names, taken, (2, 2)), _words(rng, n_names, taken, (2, 3))
    pairs = [f"{f} {s}" for f in first for s in last]
    rng.shuffle(pairs)
    people = []
    for name in pairs[: cfg.n_people]:
        facts = {a: rng.choice(values[a]) for a in ATTRIBUTES}
        heldout = {a: rng.randrange(len(TEMPLATES[a])) for a in ATTRIBUTES}
        people.append(Person(name, facts, heldout))
    forget = tuple(p.name for p in rng.sample(people, cfg.n_forget))
    return World(cfg, tuple(people), values, forget)


def world_tokenizer(world: World):
    """A word-level tokenizer (lower-cased, split on white space and punctuation, ``[bos]`` prepended)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(world.vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[unk]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[bos] $A", pair="[bos] $A $B", special_tokens=[("[bos]", vocab["[bos]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[bos]",
        eos_token="[eos]",
        unk_token="[unk]",
        pad_token="[pad]",
        clean_up_tokenization_spaces=False,
    )


def train_world_model(
    world: World,
    *,
    without_forget: bool = False,
    progress: bool = True,
    init: Model | None = None,
    corpus: list[str] | None = None,
    steps: int | None = None,
    name: str | None = None,
) -> Model:
    """Train a gpt2-architecture model from scratch on the world's corpus (AdamW, warm-up then cosine
    decay, loss on every token). Deterministic for a given config on a given torch build. ``init`` continues
    a copy of that model instead, ``corpus`` replaces the world's corpus and ``steps`` the number of steps
    (``epochs`` over the corpus by default; a smaller corpus then cycles through its documents)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = world.config
    tok = world_tokenizer(world)
    hf_cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=cfg.n_positions,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(cfg.seed)
    hf = GPT2LMHeadModel(hf_cfg) if init is None else init.copy().hf
    corpus = list(corpus) if corpus is not None else world.corpus(without_forget=without_forget)
    random.Random(f"{cfg.seed}-pack").shuffle(corpus)
    texts = [" ".join(corpus[i : i + cfg.pack]) for i in range(0, len(corpus), cfg.pack)]
    docs = [tok(t + " [eos]")["input_ids"] for t in texts]
    steps_per_epoch = math.ceil(len(docs) / cfg.batch_size)
    total = steps if steps is not None else steps_per_epoch * cfg.epochs
    decay = [p for n, p in hf.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in hf.named_parameters() if p.dim() < 2]

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []

    def step_loss(step: int) -> torch.Tensor:
        s = (step - 1) % steps_per_epoch * cfg.batch_size
        if s == 0:  # a new epoch: a new order of the documents
            order[:] = torch.randperm(len(docs), generator=gen).tolist()
        batch = [docs[i] for i in order[s : s + cfg.batch_size]]
        width = max(len(d) for d in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, d in enumerate(batch):
            ids[i, : len(d)] = torch.tensor(d)
            labels[i, : len(d)] = torch.tensor(d)
            mask[i, : len(d)] = 1
        return hf(input_ids=ids, attention_mask=mask, labels=labels).loss

    hf.train()
    train(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        step_loss,
        total,
        lr=cfg.lr,
        schedule=lr_at,
        betas=(0.9, 0.98),
        clip_parameters=hf.parameters(),
        desc="train world" + (" oracle" if without_forget else ""),
        progress=progress,
        show_loss=True,
    )
    hf.eval()
    return Model(hf, tok, name=name or ("world-oracle" if without_forget else "world-full"))


@dataclass(frozen=True)
class WorldModels:
    world: World
    full: Model
    oracle: Model
    path: Path
    train_seconds: dict[str, float]


def _cached_pair(
    root: Path, train: Callable[[Path], dict[str, float]], meta: dict[str, Any]
) -> tuple[Model, Model, dict[str, float]]:
    """The ``full`` and ``oracle`` models cached under ``root``: ``train(folder)`` saves both into a
    temporary folder and returns its training seconds; the folder becomes ``root`` by one rename, so an
    interrupted training never leaves a half cache."""
    with locked(root.with_name(root.name + ".lock")):
        if not (root / "world.json").exists():
            tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            seconds = train(tmp)
            atomic_write_text(tmp / "world.json", json.dumps({**meta, "train_seconds": seconds}, indent=1))
            shutil.rmtree(root, ignore_errors=True)  # a folder without world.json is an unfinished copy
            tmp.rename(root)
    seconds = json.loads((root / "world.json").read_text()).get("train_seconds", {})
    return load_model(str(root / "full")), load_model(str(root / "oracle")), seconds


def world_models(config: WorldConfig | None = None, *, progress: bool = True) -> WorldModels:
    """The full model and the retrain oracle of ``config``, trained once and cached by config hash
    (``_cached_pair``: atomic, and trained by one process when several ask at once)."""
    world = build_world(config)
    root = cache_dir() / "world" / world.config.key()

    def train(folder: Path) -> dict[str, float]:
        seconds = {}
        for kind in ("full", "oracle"):
            t0 = time.perf_counter()
            model = train_world_model(world, without_forget=kind == "oracle", progress=progress)
            seconds[kind] = round(time.perf_counter() - t0, 1)
            model.save(folder / kind)
        return seconds

    full, oracle, seconds = _cached_pair(root, train, {"config": world.config.to_dict()})
    return WorldModels(world, full, oracle, root, seconds)


def lineage_models(config: WorldConfig | None = None, *, progress: bool = True) -> WorldModels:
    """A harder ground truth than two runs from scratch: one common model trained on the retained people
    (``epochs // 2`` epochs), then continued for the same number of steps (``epochs // 2`` epochs of the
    whole corpus) on the whole world (``full``) and on the retained people only (``oracle``). The two share
    their lineage, so their neurons correspond (the weight-space traces can vote) and the oracle is what
    exact unlearning of a model that had learned everything else first looks like. Cached like
    ``world_models``, under ``<config hash>-lineage``."""
    world = build_world(config)
    cfg = world.config
    root = cache_dir() / "world" / f"{cfg.key()}-lineage"

    def train(folder: Path) -> dict[str, float]:
        half = dataclasses.replace(cfg, epochs=max(1, cfg.epochs // 2))
        half_world = dataclasses.replace(world, config=half)
        t0 = time.perf_counter()
        common = train_world_model(half_world, without_forget=True, progress=progress, name="world-common")
        seconds = {"common": round(time.perf_counter() - t0, 1)}
        steps = math.ceil(len(world.corpus()) / cfg.batch_size) * half.epochs
        for kind in ("full", "oracle"):
            t0 = time.perf_counter()
            model = train_world_model(
                half_world,
                without_forget=kind == "oracle",
                init=common,
                steps=steps,
                progress=progress,
                name=f"world-lineage-{kind}",
            )
            seconds[kind] = round(time.perf_counter() - t0, 1)
            model.save(folder / kind)
        return seconds

    full, oracle, seconds = _cached_pair(root, train, {"config": cfg.to_dict(), "lineage": True})
    full.name, oracle.name = "world-lineage-full", "world-lineage-oracle"
    return WorldModels(world, full, oracle, root, seconds)
