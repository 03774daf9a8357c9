"""Many L2-penalized multinomial logistic regressions solved at once (the solver of ``probes.linear``).

Each problem is ``mean CE + l2 * ||W||^2`` on features standardized with its training rows' mean and
standard deviation: scikit-learn's ``LogisticRegression(C = 1 / (2 * l2 * n_train))`` after a
``StandardScaler`` solves the same problem. How it is made fast without changing the optimum:

- the optimum lies in the span of the training rows (representer theorem), so each problem is solved in
  the principal coordinates of its training rows, from the eigendecomposition of their Gram matrix
  (``m x m`` for ``m`` training rows, far cheaper than an SVD of ``m x d_model``), scaled so that the
  curvature at the start is about 1 in every direction;
- training rows are moved to the front of each problem and held-out rows take no part in the fit, and
  problems with similar training sizes are solved at their own size (a k-fold problem has
  ``(k-1)/k`` of the rows, so its coordinates are ``((k-1)/k)^2`` of the full-data fit's);
- all problems run through one L-BFGS that keeps each problem's own history, step and stopping test
  (``probes.lbfgs``), with the analytic gradient and no copy of the data while the running set stays
  large; the tasks of a problem (a probe and its shuffled-label control) read its features once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from probes.lbfgs import batched_lbfgs


@dataclass(frozen=True)
class Fit:
    """Weights of a batch of problems in standardized units: logits = ((x - mean) / std) @ weight + bias."""

    mean: Float[torch.Tensor, "problem d_model"]
    std: Float[torch.Tensor, "problem d_model"]
    weight: Float[torch.Tensor, "task problem d_model n_classes"]
    bias: Float[torch.Tensor, "task problem n_classes"]
    heldout_logits: Float[torch.Tensor, "task problem n n_classes"]


def _eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched symmetric eigendecomposition. On the CPU each LAPACK call runs on one thread (threads
    inside one small call gain nothing, and oversubscribed OpenMP threads slowed it 40x in our
    measurements) and the batch is split across threads instead (2 threads: 1.9x on 2 cores)."""
    if a.device.type != "cpu":
        return torch.linalg.eigh(a)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = a.chunk(threads)
        if len(parts) == 1:
            return torch.linalg.eigh(a)
        with ThreadPoolExecutor(len(parts)) as pool:
            out = list(pool.map(torch.linalg.eigh, parts))
        return torch.cat([v for v, _ in out]), torch.cat([e for _, e in out])
    finally:
        torch.set_num_threads(threads)


def _buckets(sizes: list[int], ratio: float = 0.9) -> list[list[int]]:
    """Problem indices grouped so that each group is solved at its largest training size with at most
    ``1 - ratio`` of it padding."""
    groups: list[list[int]] = []
    top = -1
    for p in sorted(range(len(sizes)), key=lambda p: -sizes[p]):
        if not groups or sizes[p] < ratio * top:
            groups.append([])
            top = sizes[p]
        groups[-1].append(p)
    return [sorted(g) for g in groups]


class _Bucket:
    """Problems solved at one size ``m``: rows reordered training-first, coordinates of the training rows'
    principal directions scaled to unit initial curvature."""

    def __init__(self, z, train, labels, n_train, n_classes: int, l2: float) -> None:
        self.m = m = int(train.sum(-1).max())
        self.order = torch.argsort((~train).to(torch.int8), dim=-1, stable=True)  # [Pb, n]
        z = z.gather(1, self.order[..., None].expand(-1, -1, z.shape[-1]))
        w = train.gather(1, self.order)[:, :m].to(z.dtype)  # [Pb, m]: 0 on padding
        self.zt = z[:, :m] * w[..., None]  # [Pb, m, d]
        kernel = z @ self.zt.transpose(-1, -2)  # [Pb, n, m]
        evals, evecs = _eigh((kernel[:, :m] * w[..., None]).double())
        s = evals.clamp(min=0).sqrt().float()
        keep = s > 1e-5 * s.amax(-1, keepdim=True)
        inv_s = torch.where(keep, 1.0 / s.clamp(min=1e-30), 0.0)
        curvature = s**2 / n_train[:, None] / n_classes + 2 * l2  # ~ Hessian diagonal in that basis
        self.directions = evecs.float() * (inv_s / curvature.sqrt())[:, None, :]  # [Pb, m, m]
        self.feats = kernel @ self.directions  # [Pb, n, m] = z V / sqrt(curvature), all rows
        penalty = l2 / curvature  # ||W||^2 = sum_j ||u_j||^2 / curvature_j
        rows = labels[:, self.order[:, :m]].permute(1, 2, 0)  # [Pb, m, T]
        onehot = torch.nn.functional.one_hot(rows, n_classes).to(z.dtype)  # [Pb, m, T, c]
        self.rows = _RowCache((self.feats[:, :m], w / n_train[:, None], penalty, onehot))

    def objective(
        self, flat: torch.Tensor, task: torch.Tensor, problem: torch.Tensor, width: int, n_classes: int
    ):
        """Value and analytic gradient of the bucket's ``(task, problem)`` pairs from the padded parameter
        rows ``flat`` (``width`` coordinates per class, then the bias). The tasks of a problem share its
        features: they are read once for all tasks, with the tasks not asked for at zero."""
        held, (f, wt, pen, oh) = self.rows(torch.unique(problem))
        pos = torch.searchsorted(held, problem)
        h, m, tasks = len(held), self.m, oh.shape[2]
        u = flat.new_zeros(h, m, tasks, n_classes)
        u[pos, :, task] = flat[:, : width * n_classes].view(-1, width, n_classes)[:, :m]
        b = flat.new_zeros(h, tasks, n_classes)
        b[pos, task] = flat[:, width * n_classes :]
        logits = torch.bmm(f, u.view(h, m, tasks * n_classes)).view(h, m, tasks, n_classes) + b[:, None]
        logp = logits.log_softmax(-1)
        value = -((oh * logp).sum(-1) * wt[..., None]).sum(1) + (pen[..., None, None] * u * u).sum((1, 3))
        g_logits = (logp.exp() - oh) * wt[..., None, None]  # [h, m, T, c]
        g_u = torch.bmm(f.transpose(1, 2), g_logits.view(h, m, tasks * n_classes)).view(
            h, m, tasks, n_classes
        )
        g_u += 2 * pen[..., None, None] * u
        grad = flat.new_zeros(flat.shape)
        grad[:, : width * n_classes].view(-1, width, n_classes)[:, :m] = g_u[pos, :, task]
        grad[:, width * n_classes :] = g_logits.sum(1)[pos, task]
        return value[pos, task], grad


class _RowCache:
    """The data of the problems asked for by a bucket's objective, gathered as rarely as possible. The
    L-BFGS asks for its running set over and over (a set that shrinks one problem at a time) and, in
    between, for the few problems still backtracking. Two gathered sets are kept, a large and a small one;
    one serves while the problems asked for are at least ``keep`` of it (the others are evaluated at zero
    and dropped). While every problem runs, the stored tensors serve as they are."""

    def __init__(self, data: tuple[torch.Tensor, ...], keep: float = 0.7) -> None:
        self.data, self.keep = data, keep
        self.held: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []  # (sorted problems, rows)

    def __call__(self, wanted: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``(held, rows)``: a held set of problems that contains the sorted ``wanted``, and its rows."""
        for held, rows in self.held:
            if len(held) >= len(wanted) >= self.keep * len(held):
                where = torch.searchsorted(held, wanted).clamp(max=len(held) - 1)
                if bool((held[where] == wanted).all()):
                    return held, rows
        everything = len(wanted) == len(self.data[0])
        entry = (wanted.clone(), self.data if everything else tuple(t[wanted] for t in self.data))
        large = [h for h in self.held if len(h[0]) > len(wanted)]
        self.held = [entry, *large[:1]] if large else [entry, *self.held[1:2]]
        return entry


def fit_logistic(
    x: Float[torch.Tensor, "problem n d_model"],
    labels: Int[torch.Tensor, "task n"],
    train: torch.Tensor,
    n_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 100,
    tol: float = 1e-5,
) -> Fit:
    """Fit ``task x problem`` L2-penalized multinomial logistic regressions at once (L-BFGS, full batch).
    ``x[p]`` holds all rows of problem ``p``; ``train[p]`` (bool) marks its training rows. Returns the
    weights and the logits of every row (held-out rows included)."""
    x = x.float()
    labels, train = labels.to(x.device), train.to(x.device).bool()
    tasks, problems = labels.shape[0], x.shape[0]
    w = train.to(x.dtype)
    n_train = w.sum(-1).clamp(min=1)
    mean = (x * w[..., None]).sum(1) / n_train[:, None]
    std = ((((x - mean[:, None]) ** 2) * w[..., None]).sum(1) / n_train[:, None]).sqrt().clamp(min=1e-6)
    groups = _buckets(train.sum(-1).tolist())
    buckets = []
    for g in groups:
        idx = torch.tensor(g, device=x.device)
        z = (x[idx] - mean[idx, None]) / std[idx, None]
        buckets.append(_Bucket(z, train[idx], labels, n_train[idx], n_classes, l2))
    width = max(b.m for b in buckets)
    size = width * n_classes + n_classes
    # problem p of the caller -> (bucket, position in it)
    bucket_of = torch.empty(problems, dtype=torch.long, device=x.device)
    position = torch.empty(problems, dtype=torch.long, device=x.device)
    for i, g in enumerate(groups):
        bucket_of[g] = i
        position[g] = torch.arange(len(g), device=x.device)

    def objective(flat: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        task, problem = which // problems, which % problems
        value, grad = flat.new_empty(len(which)), torch.empty_like(flat)
        for i, b in enumerate(buckets):
            sel = (bucket_of[problem] == i).nonzero().flatten()
            if len(sel):
                value[sel], grad[sel] = b.objective(
                    flat[sel], task[sel], position[problem[sel]], width, n_classes
                )
        return value, grad

    x0 = torch.zeros(tasks * problems, size, device=x.device)
    solution, _ = batched_lbfgs(objective, x0, max_iter=max_iter, tol=tol)
    solution = solution.view(tasks, problems, size)
    weight = x.new_zeros(tasks, problems, x.shape[-1], n_classes)
    logits = x.new_zeros(tasks, problems, x.shape[1], n_classes)
    bias = solution[..., width * n_classes :]
    with torch.no_grad():
        for g, b in zip(groups, buckets):
            u = solution[:, g, : width * n_classes].view(tasks, len(g), width, n_classes)[:, :, : b.m]
            mine = torch.einsum("pnr,tprc->tpnc", b.feats, u) + bias[:, g, None, :]  # training rows first
            logits[:, g] = torch.empty_like(mine).scatter_(2, b.order[None, ..., None].expand_as(mine), mine)
            basis = b.zt.transpose(-1, -2) @ b.directions  # [Pb, d, m] = V / sqrt(curvature)
            weight[:, g] = torch.einsum("pdr,tprc->tpdc", basis, u)
    return Fit(mean, std, weight, bias.clone(), logits)
