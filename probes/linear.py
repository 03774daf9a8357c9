"""Linear probes on the residual stream, every layer at once, with a control task.

"Unforgettable Generalization in Language Models" (Zhang et al. 2024): a linear classifier on residual
activations (per layer, at a fixed token such as the last subject token) decodes a fact's attribute; apply
it, and a probe re-fitted on the same layer, to the unlearned model. Hewitt & Liang 2019 ("Designing and
Interpreting Probes with Control Tasks"): report the accuracy of the same probe on a control task (the
same inputs with shuffled labels) and the selectivity = accuracy - control accuracy.

How it is computed here:

- activations: ``blocks.{l}.hook_resid_post`` of every layer in one forward pass per batch, at the last
  token of the entity inside the template (``position="entity"``) or the last token of the prompt
  (``"last"``). The model is causal, so the input is cut after that token: the activation is the same and
  the forward is shorter.
- fitting: multinomial logistic regression with an L2 penalty, ``mean CE + l2 * ||W||^2`` on features
  standardized with the training rows' mean and standard deviation (sklearn's ``LogisticRegression`` with
  ``C = 1 / (2 * l2 * n_train)`` after a ``StandardScaler`` solves the same problem). All layers, all
  k-fold splits, the full-data fit and the control task are solved at once on the model's device by
  ``probes.logistic.fit_logistic`` (each problem in the principal coordinates of its own training rows,
  one L-BFGS with per-problem history, step and stopping test; tested against sklearn).
- convergence: with d_model > n the problems are ill-conditioned and held-out accuracy depends on how far
  the solver goes. Measured on SmolLM2 (city_country, person_occupation; 30 layers): scikit-learn at its
  default tol 1e-4 is up to 2.6 points from its own converged optimum (tol 1e-8); the defaults here
  (``max_iter=150``, gradient ``tol=1e-5`` in the scaled coordinates) are within 0.42 / 0.52 points of
  that optimum on every layer (median 125 / 102 iterations per problem).
- accuracy: pooled held-out predictions of stratified k-fold, with a 95% Wilson interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from probes import hooks
from probes.data import DATA_DIR
from probes.errors import MismatchError, VestigeError
from probes.logistic import Fit, fit_logistic
from probes.model import Model
from probes.results import Result

PROBE_DIR = DATA_DIR / "probes"
PROBE_DATASETS = ("city_country", "person_occupation")
POSITIONS = ("entity", "last")


class ProbeDataError(VestigeError):
    """A probe data file does not follow its format."""


# ---- data ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProbeDataset(Result):
    """Entities with an attribute class, read at a position inside ``template`` (``{entity}`` marks where
    the entity goes), e.g. ``"{entity} is a city in"`` with ``Lyon -> France``."""

    name: str
    attribute: str
    template: str
    entities: tuple[str, ...]
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        if "{entity}" not in self.template:
            raise ProbeDataError(
                f"probe template {self.template!r} has no '{{entity}}'",
                "the probe reads the representation of the entity inside the template",
                'write the template as e.g. "{entity} is a city in"',
            )
        if len(self.entities) != len(self.labels):
            raise ProbeDataError(
                f"{len(self.entities)} entities but {len(self.labels)} labels", None, "give one label each"
            )
        if len(set(self.labels)) < 2:
            raise ProbeDataError(
                f"probe data {self.name!r} has fewer than 2 classes",
                "a classifier needs at least two attribute values",
                "add items of other classes",
            )

    def __len__(self) -> int:
        return len(self.entities)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.labels)))

    @property
    def y(self) -> Int[torch.Tensor, " n"]:
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([index[label] for label in self.labels], dtype=torch.long)

    def texts(self) -> list[str]:
        return [self.template.replace("{entity}", e) for e in self.entities]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"entity": self.entities, "label": self.labels})


def load_probe_dataset(name_or_path: str | Path) -> ProbeDataset:
    """A bundled probe set by name (``city_country``, ``person_occupation``) or a JSON file
    ``{"attribute": ..., "template": "{entity} ...", "items": [{"entity": ..., "label": ...}]}``."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PROBE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ProbeDataError(
            f"probe data {str(name_or_path)!r} not found",
            f"looked for {path}",
            f"pass a JSON file or one of the bundled sets: {', '.join(PROBE_DATASETS)}",
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ProbeDataError(f"{path} is not valid JSON", str(e), "fix the file") from e
    items = raw.get("items") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(x, dict) and {"entity", "label"} <= set(x) for x in items
    ):
        raise ProbeDataError(
            f"{path}: 'items' must be a list of {{entity, label}} objects",
            f"found {type(items).__name__}",
            '{"attribute": "country", "template": "{entity} is a city in", '
            '"items": [{"entity": "Lyon", "label": "France"}]}',
        )
    return ProbeDataset(
        name=path.stem,
        attribute=str(raw.get("attribute", path.stem)),
        template=str(raw.get("template", "{entity}")),
        entities=tuple(str(x["entity"]) for x in items),
        labels=tuple(str(x["label"]) for x in items),
    )


# ---- activations -------------------------------------------------------------------------------------------
def probe_inputs(model: Model, dataset: ProbeDataset, position: str = "entity") -> list[list[int]]:
    """Token ids of each text, cut after the probed token (the last token of the entity, or of the text)."""
    if position not in POSITIONS:
        raise ProbeDataError(
            f"unknown probe position {position!r}", None, f"use one of {', '.join(POSITIONS)}"
        )
    tok = model.tokenizer
    start = dataset.template.index("{entity}")
    out = []
    for entity, text in zip(dataset.entities, dataset.texts()):
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if position == "last":
            out.append(ids)
            continue
        end = start + len(entity)
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
        if not inside:
            raise ProbeDataError(
                f"entity {entity!r} has no token in {text!r}",
                "the tokenizer's offsets do not cover the entity",
                "check the entity and the template",
            )
        out.append(ids[: inside[-1] + 1])
    return out


def collect_activations(
    model: Model,
    dataset: ProbeDataset,
    *,
    position: str = "entity",
    batch_size: int = 32,
    progress: bool = False,
) -> Float[torch.Tensor, "n_layers n d_model"]:
    """``resid_post`` of every layer at the probed token, one forward pass per batch (all layers' hooks at
    once), float32 on the model's device."""
    inputs = probe_inputs(model, dataset, position)
    names = hooks.all_layers(hooks.resid_post, model.cfg.n_layers)
    out = torch.empty(model.cfg.n_layers, len(inputs), model.cfg.d_model, device=model.device)
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    for start in tqdm(range(0, len(order), batch_size), desc="probe activations", disable=not progress):
        rows = order[start : start + batch_size]
        ids, mask = model.pad([inputs[i] for i in rows], padding_side="left")
        _, cache = hooks.run_with_cache(model, ids, names, mask=mask, logits_to_keep=1)
        out[:, rows] = torch.stack([cache[n][:, -1] for n in names]).float()  # left padding: probed = last
    return out


# ---- statistics ---------------------------------------------------------------------------------------------
def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def stratified_folds(y: Int[torch.Tensor, " n"], k: int, seed: int = 0) -> Int[torch.Tensor, " n"]:
    """Fold id of each item: within each class, a seeded permutation dealt round-robin into ``k`` folds."""
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(y), dtype=torch.long)
    offset = 0
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        fold[idx] = (torch.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


# ---- batched multinomial logistic regression ----------------------------------------------------------------
@dataclass(frozen=True)
class ProbeConfig(Result):
    """``folds``-fold held-out accuracy; ``l2`` in ``mean CE + l2 * ||W||^2`` (standardized features);
    ``control``: also fit the shuffled-label control task (Hewitt & Liang 2019)."""

    folds: int = 5
    l2: float = 1e-3
    max_iter: int = 150
    tol: float = 1e-5
    control: bool = True
    seed: int = 0


# ---- probes and results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearProbe:
    """Probes of every layer: the full-data fit (to apply to new inputs) and the k-fold fits (to get
    held-out predictions of the same items on another model). Weights in standardized units."""

    dataset: ProbeDataset
    position: str
    model: str
    d_model: int
    config: ProbeConfig
    fold_of: Int[torch.Tensor, " n"]
    mean: Float[torch.Tensor, "fit n_layers d_model"]  # fit = folds + 1 (the last is all data)
    std: Float[torch.Tensor, "fit n_layers d_model"]
    weight: Float[torch.Tensor, "fit n_layers d_model n_classes"]
    bias: Float[torch.Tensor, "fit n_layers n_classes"]
    heldout_accuracy: tuple[float, ...] = ()

    @property
    def n_layers(self) -> int:
        return self.weight.shape[1]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.dataset.classes

    def logits(self, acts: Float[torch.Tensor, "n_layers n d_model"]) -> Float[torch.Tensor, "n_layers n c"]:
        """Logits of the full-data probe of each layer."""
        acts = acts.to(self.weight.device, torch.float32)
        z = (acts - self.mean[-1][:, None]) / self.std[-1][:, None]
        return z @ self.weight[-1] + self.bias[-1][:, None]

    def predict(self, acts: Float[torch.Tensor, "n_layers n d_model"]) -> Int[torch.Tensor, "n_layers n"]:
        return self.logits(acts).argmax(-1)

    def heldout_predict(
        self, acts: Float[torch.Tensor, "n_layers n d_model"]
    ) -> Int[torch.Tensor, "n_layers n"]:
        """Predictions for this probe's own items where item i is classified by the fold probe that did
        not train on it (acts may come from another model)."""
        acts = acts.to(self.weight.device, torch.float32)
        k = self.fold_of.to(acts.device)
        out = torch.empty(acts.shape[0], acts.shape[1], dtype=torch.long, device=acts.device)
        for j in torch.unique(k).tolist():  # fold by fold: no per-item copy of the weights
            idx = (k == j).nonzero().flatten()
            z = (acts[:, idx] - self.mean[j][:, None]) / self.std[j][:, None]  # [L, m, d]
            logits = torch.einsum("lmd,ldc->lmc", z, self.weight[j]) + self.bias[j][:, None]
            out[:, idx] = logits.argmax(-1)
        return out


def _accuracy_columns(
    correct: torch.Tensor,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    n = correct.shape[-1]
    hits = correct.sum(-1).tolist()
    ci = [wilson_interval(int(h), n) for h in hits]
    return tuple(h / n for h in hits), tuple(lo for lo, _ in ci), tuple(hi for _, hi in ci)


@dataclass(frozen=True)
class ProbeResult(Result):
    """Held-out accuracy of the probe of every layer with its 95% Wilson interval, the control task's
    accuracy (shuffled labels, same inputs) and the selectivity (Hewitt & Liang 2019)."""

    model: str
    dataset: str
    attribute: str
    position: str
    classes: tuple[str, ...]
    n_items: int
    layers: tuple[int, ...]
    accuracy: tuple[float, ...]
    accuracy_low: tuple[float, ...]
    accuracy_high: tuple[float, ...]
    control_accuracy: tuple[float, ...]
    control_low: tuple[float, ...]
    control_high: tuple[float, ...]
    chance: float
    config: ProbeConfig
    probe: LinearProbe = field(repr=False, compare=False)

    @property
    def selectivity(self) -> tuple[float, ...]:
        return tuple(a - c for a, c in zip(self.accuracy, self.control_accuracy))

    @property
    def best_layer(self) -> int:
        """The layer with the highest held-out accuracy (the earliest on ties)."""
        return self.layers[max(range(len(self.layers)), key=lambda i: (self.accuracy[i], -i))]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "layer": self.layers,
                "accuracy": self.accuracy,
                "accuracy_low": self.accuracy_low,
                "accuracy_high": self.accuracy_high,
                "control_accuracy": self.control_accuracy,
                "control_low": self.control_low,
                "control_high": self.control_high,
                "selectivity": self.selectivity,
            }
        )

    def to_dict(self) -> dict:
        best = self.layers.index(self.best_layer)
        return {
            "model": self.model,
            "dataset": self.dataset,
            "attribute": self.attribute,
            "position": self.position,
            "classes": list(self.classes),
            "n_items": self.n_items,
            "chance": self.chance,
            "config": self.config.to_dict(),
            "best_layer": self.best_layer,
            "best_accuracy": self.accuracy[best],
            "best_selectivity": self.selectivity[best],
            "layers": self.to_frame().to_dict(orient="records"),
        }

    def _repr_html_(self) -> str:
        return f"<h4>ProbeResult: {self.attribute} on {self.model}</h4>" + self.to_frame().to_html(
            index=False, float_format="{:.3f}".format
        )

    def figure(self) -> go.Figure:
        """Accuracy by layer with its 95% interval, the control task, and chance."""
        return _accuracy_figure(
            self.layers,
            [
                ("probe", self.accuracy, self.accuracy_low, self.accuracy_high),
                ("control (shuffled labels)", self.control_accuracy, self.control_low, self.control_high),
            ],
            self.chance,
            f"Linear probe: {self.attribute} ({self.dataset}) on {self.model}",
        )


def _accuracy_figure(layers, series, chance: float, title: str) -> go.Figure:
    fig = go.Figure()
    for name, acc, lo, hi in series:
        fig.add_trace(
            go.Scatter(
                x=list(layers),
                y=list(acc),
                name=name,
                mode="lines+markers",
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [h - a for a, h in zip(acc, hi)],
                    "arrayminus": [a - lo_ for a, lo_ in zip(acc, lo)],
                },
            )
        )
    fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
    fig.update_layout(title=title, xaxis_title="layer (resid_post)", yaxis_title="held-out accuracy")
    fig.update_yaxes(range=[0, 1.02])
    return fig


PROBE_CHUNK_FLOATS = 1 << 21  # activations per chunk of layers fitted at once (8 MB in float32)


def _fold_major(pieces: Sequence[Fit], folds: int) -> Fit:
    """Fits of consecutive chunks of layers, each ordered fold-major (problem = fold * chunk + layer), as
    one fit of all layers in the same order (problem = fold * n_layers + layer)."""

    def join(get, task_dim: bool) -> torch.Tensor:
        first = get(pieces[0])
        lead = tuple(first.shape[:1]) if task_dim else ()
        rest = tuple(first.shape[len(lead) + 1 :])
        parts = [get(f).reshape(*lead, folds, -1, *rest) for f in pieces]  # [(task,) fold, layer, ...]
        return torch.cat(parts, dim=len(lead) + 1).reshape(*lead, -1, *rest)

    if len(pieces) == 1:
        return pieces[0]
    return Fit(
        mean=join(lambda f: f.mean, False),
        std=join(lambda f: f.std, False),
        weight=join(lambda f: f.weight, True),
        bias=join(lambda f: f.bias, True),
        heldout_logits=join(lambda f: f.heldout_logits, True),
    )


def fit_probes_on(
    acts: Float[torch.Tensor, "n_layers n d_model"],
    dataset: ProbeDataset,
    *,
    config: ProbeConfig = ProbeConfig(),
    position: str = "entity",
    model_name: str = "",
) -> ProbeResult:
    """Fit every layer's probe (k folds + the full-data fit, and the control task) on given activations."""
    n_layers, n, d = acts.shape
    if n != len(dataset):
        raise ProbeDataError(f"{n} activation rows for {len(dataset)} items", None, "pass matching inputs")
    k = config.folds
    if k < 2 or k > n:
        raise ProbeDataError(f"folds={k} for {n} items", "k-fold needs 2 <= k <= n", "use folds=5")
    y = dataset.y
    fold = stratified_folds(y, k, config.seed)
    train = torch.stack([fold != j for j in range(k)] + [torch.ones(n, dtype=torch.bool)])  # [k+1, n]
    labels = [y]
    if config.control:
        gen = torch.Generator().manual_seed(config.seed + 1)
        labels.append(y[torch.randperm(n, generator=gen)])
    # the (k + 1) x n_layers problems are independent: fitted a few layers at a time, so that the
    # standardized copies of the activations stay within PROBE_CHUNK_FLOATS (the same fits, less memory)
    per_layer = (k + 1) * n * d
    step = max(1, PROBE_CHUNK_FLOATS // per_layer)
    pieces = []
    for l0 in range(0, n_layers, step):
        chunk = acts[l0 : l0 + step].float()
        lc = chunk.shape[0]
        pieces.append(
            fit_logistic(
                chunk[None].expand(k + 1, lc, n, d).reshape((k + 1) * lc, n, d),
                torch.stack(labels),
                train.repeat_interleave(lc, dim=0).to(acts.device),
                len(dataset.classes),
                l2=config.l2,
                max_iter=config.max_iter,
                tol=config.tol,
            )
        )
    fit = _fold_major(pieces, k + 1)
    c = len(dataset.classes)
    logits = fit.heldout_logits.view(len(labels), k + 1, n_layers, n, c)
    # held-out: item i from the fold-(fold[i]) problem, which did not train on it
    fold_dev = fold.to(logits.device)
    per_item = logits.permute(0, 3, 1, 2, 4)  # [T, n, k+1, L, C]
    pred = (
        per_item[:, torch.arange(n, device=logits.device), fold_dev].argmax(-1).transpose(1, 2)
    )  # [T, L, n]
    lab = torch.stack(labels).to(pred.device)[:, None, :]
    acc, lo, hi = _accuracy_columns(pred[0] == lab[0])
    if config.control:
        c_acc, c_lo, c_hi = _accuracy_columns(pred[1] == lab[1])
    else:
        c_acc = c_lo = c_hi = tuple(float("nan") for _ in range(n_layers))
    probe = LinearProbe(
        dataset=dataset,
        position=position,
        model=model_name,
        d_model=d,
        config=config,
        fold_of=fold,
        mean=fit.mean.view(k + 1, n_layers, d),
        std=fit.std.view(k + 1, n_layers, d),
        weight=fit.weight[0].view(k + 1, n_layers, d, c),
        bias=fit.bias[0].view(k + 1, n_layers, c),
        heldout_accuracy=acc,
    )
    counts = torch.bincount(y, minlength=c)
    return ProbeResult(
        model=model_name,
        dataset=dataset.name,
        attribute=dataset.attribute,
        position=position,
        classes=dataset.classes,
        n_items=n,
        layers=tuple(range(n_layers)),
        accuracy=acc,
        accuracy_low=lo,
        accuracy_high=hi,
        control_accuracy=c_acc,
        control_low=c_lo,
        control_high=c_hi,
        chance=float(counts.max()) / n,
        config=config,
        probe=probe,
    )


def fit_probes(
    model: Model,
    dataset: ProbeDataset | str | Path,
    *,
    position: str = "entity",
    config: ProbeConfig = ProbeConfig(),
    batch_size: int = 32,
    progress: bool = False,
) -> ProbeResult:
    """Collect every layer's activations in one pass and fit all layers' probes at once."""
    if not isinstance(dataset, ProbeDataset):
        dataset = load_probe_dataset(dataset)
    acts = collect_activations(model, dataset, position=position, batch_size=batch_size, progress=progress)
    return fit_probes_on(acts, dataset, config=config, position=position, model_name=model.name)


# ---- transfer ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransferResult(Result):
    """A probe fitted on ``source`` applied to ``target``'s activations (held-out: each item classified by
    the fold probe that did not see it), and a probe re-fitted on ``target`` (Zhang et al. 2024)."""

    source: str
    target: str
    dataset: str
    attribute: str
    layers: tuple[int, ...]
    source_accuracy: tuple[float, ...]
    applied_accuracy: tuple[float, ...]
    applied_low: tuple[float, ...]
    applied_high: tuple[float, ...]
    refit: ProbeResult = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "layer": self.layers,
                "source_accuracy": self.source_accuracy,
                "applied_accuracy": self.applied_accuracy,
                "applied_low": self.applied_low,
                "applied_high": self.applied_high,
                "refit_accuracy": self.refit.accuracy,
                "refit_low": self.refit.accuracy_low,
                "refit_high": self.refit.accuracy_high,
                "refit_control": self.refit.control_accuracy,
                "refit_selectivity": self.refit.selectivity,
            }
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "dataset": self.dataset,
            "attribute": self.attribute,
            "layers": self.to_frame().to_dict(orient="records"),
            "refit": self.refit.to_dict(),
        }

    def figure(self) -> go.Figure:
        r = self.refit
        nan = tuple(float("nan") for _ in self.layers)
        return _accuracy_figure(
            self.layers,
            [
                (f"probe on {self.source}", self.source_accuracy, nan, nan),
                (f"same probe on {self.target}", self.applied_accuracy, self.applied_low, self.applied_high),
                (f"re-fitted on {self.target}", r.accuracy, r.accuracy_low, r.accuracy_high),
                ("control (re-fit, shuffled labels)", r.control_accuracy, r.control_low, r.control_high),
            ],
            r.chance,
            f"Probe transfer: {self.attribute}, {self.source} -> {self.target}",
        )


def transfer(
    probe: LinearProbe | ProbeResult,
    other_model: Model,
    *,
    batch_size: int = 32,
    progress: bool = False,
    acts: Float[torch.Tensor, "n_layers n d_model"] | None = None,
) -> TransferResult:
    """Apply a probe fitted on one model to another model's activations on the same items, and re-fit a
    probe on the other model with the same folds and settings."""
    if isinstance(probe, ProbeResult):
        probe = probe.probe
    c = other_model.cfg
    if c.d_model != probe.d_model or c.n_layers != probe.n_layers:
        raise MismatchError(
            f"the probe was fitted on {probe.n_layers} layers x d_model {probe.d_model}, the target model "
            f"has {c.n_layers} x {c.d_model}",
            "a linear probe reads one layer's residual stream; the shapes must match",
            "transfer between a base model and its fine-tuned / unlearned copy",
        )
    if acts is None:
        acts = collect_activations(
            other_model, probe.dataset, position=probe.position, batch_size=batch_size, progress=progress
        )
    pred = probe.heldout_predict(acts)
    y = probe.dataset.y.to(pred.device)
    acc, lo, hi = _accuracy_columns(pred == y[None])
    refit = fit_probes_on(
        acts, probe.dataset, config=probe.config, position=probe.position, model_name=other_model.name
    )
    return TransferResult(
        source=probe.model,
        target=other_model.name,
        dataset=probe.dataset.name,
        attribute=probe.dataset.attribute,
        layers=tuple(range(probe.n_layers)),
        source_accuracy=probe.heldout_accuracy,
        applied_accuracy=acc,
        applied_low=lo,
        applied_high=hi,
        refit=refit,
    )


def subset(dataset: ProbeDataset, indices: Sequence[int], name: str | None = None) -> ProbeDataset:
    """The items at ``indices`` (e.g. a quick run)."""
    return replace(
        dataset,
        name=name or dataset.name,
        entities=tuple(dataset.entities[i] for i in indices),
        labels=tuple(dataset.labels[i] for i in indices),
    )


@dataclass(frozen=True)
class SplitResult(Result):
    """Per layer: accuracy on the ``test`` entities of a probe fitted on all the others of the same model.
    With the forget entities as ``test``, it asks whether the unlearned attribute is still linearly
    decodable where the model's own representation of the other entities says it should be
    (Zhang et al. 2024 probe the unlearned model the same way)."""

    model: str
    dataset: str
    test_entities: tuple[str, ...]
    accuracy: tuple[float, ...]
    chance: float

    @property
    def best_accuracy(self) -> float:
        return max(self.accuracy)

    @property
    def best_layer(self) -> int:
        return int(np.argmax(self.accuracy))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": range(len(self.accuracy)), "accuracy": self.accuracy})


def split_accuracy(
    model: Model,
    dataset: ProbeDataset | str | Path,
    test_entities: Sequence[str],
    *,
    position: str = "entity",
    config: ProbeConfig = ProbeConfig(),
    batch_size: int = 32,
    acts: Float[torch.Tensor, "n_layers n d_model"] | None = None,
) -> SplitResult:
    """Fit every layer's probe on the entities not in ``test_entities`` and score it on those."""
    if not isinstance(dataset, ProbeDataset):
        dataset = load_probe_dataset(dataset)
    wanted = set(test_entities)
    test = torch.tensor([e in wanted for e in dataset.entities])
    if not test.any() or test.all():
        raise ProbeDataError(
            f"{int(test.sum())} of {len(dataset)} items of {dataset.name!r} are test entities",
            "a split probe needs items on both sides",
            "pass test entities that are a proper subset of the dataset's entities",
        )
    if acts is None:
        acts = collect_activations(model, dataset, position=position, batch_size=batch_size)
    n_layers = acts.shape[0]
    y = dataset.y
    fit = fit_logistic(
        acts.float(),
        y[None],
        (~test)[None].expand(n_layers, -1).to(acts.device),
        len(dataset.classes),
        l2=config.l2,
        max_iter=config.max_iter,
        tol=config.tol,
    )
    pred = fit.heldout_logits[0].argmax(-1).cpu()  # [L, n]
    acc = ((pred[:, test] == y[test][None]).float().mean(-1)).tolist()
    counts = torch.bincount(y[~test], minlength=len(dataset.classes))
    chance = float((y[test] == counts.argmax()).float().mean())  # majority class of the training side
    return SplitResult(model.name, dataset.name, tuple(sorted(wanted)), tuple(acc), chance)
