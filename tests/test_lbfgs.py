"""The batched L-BFGS: each problem converges on its own (history, step, stopping test)."""

from __future__ import annotations

import torch

from probes.lbfgs import batched_lbfgs, value_and_grad


def test_batched_quadratics_reach_their_closed_form_each_at_its_own_pace():
    g = torch.Generator().manual_seed(0)
    batch, m = 4, 12
    q, _ = torch.linalg.qr(torch.randn(batch, m, m, generator=g, dtype=torch.float64))
    # condition numbers 1, 10, 100, 1000: an easy problem must not wait for the hardest one
    spectra = torch.stack([torch.logspace(0, k, m, dtype=torch.float64) for k in range(batch)])
    a = q @ torch.diag_embed(spectra) @ q.transpose(-1, -2)
    b = torch.randn(batch, m, generator=g, dtype=torch.float64)

    def loss(x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.einsum("bi,bij,bj->b", x, a[which], x) - (b[which] * x).sum(-1)

    x, iters = batched_lbfgs(
        value_and_grad(loss), torch.zeros(batch, m, dtype=torch.float64), tol=1e-8, max_iter=1000
    )
    exact = torch.linalg.solve(a, b)
    torch.testing.assert_close(x, exact, rtol=1e-7, atol=1e-7)
    assert iters[0] <= 3  # a multiple of the identity: one scaled step (plus the first unit-length step)
    assert (torch.diff(iters) > 0).all()  # harder problems take more iterations; none waits for another


def test_batched_equals_one_problem_at_a_time():
    """Solving problems together gives each the result it gets alone (no shared line search or history)."""
    g = torch.Generator().manual_seed(1)
    x_data = torch.randn(3, 40, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(3, 40, generator=g) > 0.5).double()

    def make(rows: slice):
        def loss(w: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
            z = torch.einsum("bnd,bd->bn", x_data[rows][which], w)
            return (
                torch.nn.functional.softplus(z).mean(-1)
                - (y[rows][which] * z).mean(-1)
                + 1e-2 * (w * w).sum(-1)
            )

        return value_and_grad(loss)

    together, it_all = batched_lbfgs(make(slice(0, 3)), torch.zeros(3, 5, dtype=torch.float64), tol=1e-8)
    for i in range(3):
        alone, it = batched_lbfgs(make(slice(i, i + 1)), torch.zeros(1, 5, dtype=torch.float64), tol=1e-8)
        torch.testing.assert_close(together[i], alone[0], rtol=0, atol=1e-9)  # float reductions differ
        assert it.item() == it_all[i].item()
