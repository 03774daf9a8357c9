"""The batched logistic-regression solver: problems of different training sizes (solved in size buckets,
training rows first, padding inside a bucket) get the solution each gets alone."""

from __future__ import annotations

import torch

from probes.logistic import _buckets, _eigh, fit_logistic


def test_buckets_pad_at_most_ten_percent():
    sizes = [240, 192, 192, 191, 240, 100, 95]
    groups = _buckets(sizes)
    assert groups == [[0, 4], [1, 2, 3], [5, 6]]
    for g in groups:
        assert min(sizes[p] for p in g) >= 0.9 * max(sizes[p] for p in g)


def test_eigh_split_across_threads_equals_one_call():
    a = torch.randn(7, 30, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gram = a @ a.transpose(1, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        values, vectors = _eigh(gram)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(values, torch.linalg.eigh(gram).eigenvalues)
    torch.testing.assert_close(vectors @ torch.diag_embed(values) @ vectors.transpose(1, 2), gram)


def test_problems_of_different_sizes_solved_together_equal_each_alone():
    gen = torch.Generator().manual_seed(3)
    n, d, c = 80, 50, 4
    y = torch.arange(n) % c
    centers = torch.randn(c, d, generator=gen)
    x = centers[y] * 0.5 + torch.randn(3, n, d, generator=gen)  # three problems, own data each
    train = torch.ones(3, n, dtype=torch.bool)
    train[1, 5:12] = False  # 73 rows: padded into the bucket of the 80-row problem
    train[2, ::2] = False  # 40 rows: a bucket of its own
    labels = torch.stack([y, y[torch.randperm(n, generator=gen)]])  # a task and a shuffled control
    together = fit_logistic(x, labels, train, c, l2=1e-2, max_iter=1000, tol=1e-6)
    for p in range(3):
        alone = fit_logistic(x[p : p + 1], labels, train[p : p + 1], c, l2=1e-2, max_iter=1000, tol=1e-6)
        torch.testing.assert_close(together.weight[:, p], alone.weight[:, 0], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(together.bias[:, p], alone.bias[:, 0], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(
            together.heldout_logits[:, p], alone.heldout_logits[:, 0], rtol=1e-3, atol=1e-3
        )
    # the held-out rows come back in the caller's order: logits equal the weights applied to those rows
    z = (x[2] - together.mean[2]) / together.std[2]
    direct = z @ together.weight[0, 2] + together.bias[0, 2]
    torch.testing.assert_close(together.heldout_logits[0, 2], direct, rtol=1e-3, atol=1e-3)
