"""L-BFGS over a batch of independent problems, each with its own history, step and stopping test.

``torch.optim.LBFGS`` treats a batch of problems as one: one line search, one curvature history for all,
and it stops only when the worst problem has converged. For the hundreds of small probe problems of
``probes.linear`` (layers x folds x tasks) that took ~400 iterations to agree with scikit-learn's converged
optimum; solving each problem with its own two-loop recursion and Armijo backtracking (what scikit-learn's
lbfgs does per problem) converges in tens of iterations, with every operation batched on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float

# objective(x [k, m], which [k]) -> (values [k], gradients [k, m]) for the problems ``which`` of the batch
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def value_and_grad(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Objective:
    """Wrap ``loss(x, which) -> [k]`` (independent problems) as ``(x, which) -> (loss, d loss / d x)``."""

    def f(x: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = loss(x, which)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad

    return f


def batched_lbfgs(
    objective: Objective,
    x0: Float[torch.Tensor, "batch m"],
    *,
    max_iter: int = 200,
    history: int = 10,
    tol: float = 1e-6,
    max_backtracks: int = 30,
    compact: float = 0.7,
) -> tuple[Float[torch.Tensor, "batch m"], torch.Tensor]:
    """Minimise ``batch`` independent smooth functions at once. ``objective(x, which)`` returns the values
    and gradients of the problems ``which`` (indices into the batch) at ``x`` (their rows): only problems
    still running are evaluated. A problem stops when its largest absolute gradient entry is below
    ``tol`` or when its line search fails; the loop ends when all have stopped or after ``max_iter``
    iterations. The state of the stopped problems is dropped once the running ones are fewer than
    ``compact`` of it. Returns the solution and the number of iterations each problem ran."""
    out = x0.clone()
    live = torch.arange(out.shape[0], device=out.device)  # the problems whose state is held below
    x = out.clone()
    resolution = 8 * torch.finfo(x.dtype).eps
    f, g = objective(x, live)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    rho_hist: list[torch.Tensor] = []
    gamma: torch.Tensor | None = None
    iters = torch.zeros(out.shape[0], dtype=torch.long, device=x.device)
    active = g.abs().amax(-1) > tol
    for _ in range(max_iter):
        running = int(active.sum())
        if running == 0:
            break
        if running < compact * len(live):
            out[live] = x
            rows = active.nonzero().flatten()
            live, x, f, g, active = live[rows], x[rows], f[rows], g[rows], active[rows]
            s_hist, y_hist, rho_hist = (
                [h[rows] for h in s_hist],
                [h[rows] for h in y_hist],
                [h[rows] for h in rho_hist],
            )
            gamma = gamma[rows] if gamma is not None else None
        # two-loop recursion, per problem
        q = g.clone()
        alphas = []
        for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist)):
            a = rho * torch.linalg.vecdot(s, q)
            q.addcmul_(y, a[:, None], value=-1.0)
            alphas.append(a)
        if gamma is None:  # first step: unit length in the max-norm, as scikit-learn's scipy lbfgs does
            gamma = 1.0 / g.abs().sum(-1).clamp(min=1e-30)
        r = q.mul_(gamma[:, None])
        for (s, y, rho), a in zip(zip(s_hist, y_hist, rho_hist), reversed(alphas)):
            b = rho * torch.linalg.vecdot(y, r)
            r.addcmul_(s, (a - b)[:, None])
        d = r.neg_()
        slope = torch.linalg.vecdot(g, d)
        bad = slope >= 0  # not a descent direction (numerical trouble): fall back to steepest descent
        if bool(bad.any()):
            d = torch.where(bad[:, None], -g, d)
            slope = torch.where(bad, -(g * g).sum(-1), slope)
        # Armijo backtracking, per problem, up to the rounding error of f (Hager & Zhang's approximate
        # test): near the optimum the decrease is below f's resolution and would fail on noise alone
        t = torch.ones(len(live), dtype=x.dtype, device=x.device)
        todo = active.clone()
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(max_backtracks):
            which = todo.nonzero().flatten()
            t_w, f_0 = t[which], f[which]
            trial = x[which].addcmul_(d[which], t_w[:, None])
            f_w, g_w = objective(trial, live[which])
            ok = (f_w <= f_0 + 1e-4 * t_w * slope[which] + resolution * f_0.abs()) & torch.isfinite(f_w)
            done = which[ok]
            x_new[done], f_new[done], g_new[done] = trial[ok], f_w[ok], g_w[ok]
            todo[done] = False
            if len(done) == len(which):
                break
            t = torch.where(todo, t * 0.5, t)
        moved = active & ~todo  # a problem whose line search failed stays where it is and stops
        s, y = x_new - x, g_new - g
        sy, yy = torch.linalg.vecdot(s, y), torch.linalg.vecdot(y, y)
        keep = moved & (sy > torch.finfo(x.dtype).eps * yy) & (yy > 0)  # a curvature pair rounding can trust
        gamma = torch.where(keep, sy / yy.clamp(min=1e-30), gamma)  # scale of the last trusted pair
        s_hist.append(s.mul_(keep[:, None]))
        y_hist.append(y.mul_(keep[:, None]))
        rho_hist.append(torch.where(keep, 1.0 / sy.clamp(min=1e-30), 0.0))
        if len(s_hist) > history:
            s_hist.pop(0), y_hist.pop(0), rho_hist.pop(0)
        x, f, g = x_new, f_new, g_new
        iters[live] += active.long()
        active = moved & (g.abs().amax(-1) > tol)
    out[live] = x
    return out, iters
