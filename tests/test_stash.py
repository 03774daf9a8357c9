"""``probes.stash.Stash``: copies kept out of the model's memory come back bit for bit."""

from __future__ import annotations

import torch

from probes.stash import Stash


def test_stash_restores_every_tensor_bitwise_and_removes_its_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(7, 5, generator=g),
        torch.randn(3, 4, generator=g).to(torch.bfloat16),
        torch.randn(6, 4, generator=g)[:, 1:3],  # a strided view: written back through its strides
    ]
    base = torch.randn(6, 4, generator=g)
    weights[2] = base[:, 1:3]
    before = [w.clone() for w in weights]
    before_base = base.clone()
    with Stash(folder=tmp_path) as stash:
        for w in weights:
            stash.save(w)
            w.mul_(0).add_(1.5)
        assert len(stash) == 3 and all(torch.equal(w, torch.full_like(w, 1.5)) for w in weights)
        stash.restore()
        for w, b in zip(weights, before, strict=True):
            assert w.dtype == b.dtype and torch.equal(
                w.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
            )
        assert torch.equal(base, before_base)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
