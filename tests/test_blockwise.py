"""The blockwise backend (any score, called on query block x key chunk pairs) against the reference:
outputs and the gradients of every input and score parameter, across several blocks, with masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnzoo
from attnzoo import blockwise
from attnzoo.variants import PooledAttention


class ScaledL1(nn.Module):
    """A third-party, forward-only score: ``s = -scale * sum_d |q_d - k_d|`` (a broadcast)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, query, key):
        return -self.scale * (query.unsqueeze(-2) - key.unsqueeze(-3)).abs().sum(-1)


def _run(backend, pooling, q, k, v, **kw):
    torch.manual_seed(0)
    attn = PooledAttention(ScaledL1(), pooling, causal=kw.pop("causal", False), window=kw.pop("window", None),
                           backend=backend)
    with torch.no_grad():
        attn.score.scale.mul_(3.1)  # a learned value far from its initial one
    qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
    out = attn(qq, kk, vv, **kw)
    (out * torch.cos(out)).sum().backward()
    return [out, qq.grad, kk.grad, vv.grad, attn.score.scale.grad]


@pytest.mark.parametrize("masks", ["none", "valid_lens", "mask", "causal", "window"])
@pytest.mark.parametrize("pooling", ["soft", "hard"])
def test_matches_reference_across_blocks(pooling, masks):
    g = torch.Generator().manual_seed(1)
    B, Nq, Nk, D = 2, 300, 530, 3  # 2 x 3 blocks of 256
    q = 1e3 + torch.randn(B, Nq, D, generator=g, dtype=torch.float64)  # un-centred
    k = 1e3 + torch.randn(B, Nk, D, generator=g, dtype=torch.float64)
    v = 1e3 + 10 * torch.randn(B, Nk, 4, generator=g, dtype=torch.float64)
    kw = {}
    if masks == "valid_lens":
        kw["valid_lens"] = torch.randint(0, Nk + 1, (B, Nq), generator=g)  # empty rows included
        kw["valid_lens"][0, :3] = 0
    elif masks == "mask":
        kw["mask"] = torch.rand(B, Nq, Nk, generator=g) > 0.5
    elif masks == "causal":
        kw["causal"] = True
    elif masks == "window":
        kw["window"] = 40
    want = _run("reference", pooling, q, k, v, **dict(kw))
    got = _run("blockwise", pooling, q, k, v, **dict(kw))
    for name, x, y in zip(("out", "dq", "dk", "dv", "dscale"), got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9 * float(y.detach().abs().max()), msg=name)


def test_auto_picks_blockwise_for_large_broadcast_scores():
    attn = PooledAttention(ScaledL1(), "soft")
    small = torch.randn(2, 64, 32)
    big = torch.empty(2, 4096, 32)  # 2 x 4096^2 x 32 x 4 B = 4 GiB for the reference's broadcast
    assert attn.explain(small, small, small).startswith("reference:")
    why = attn.explain(big, big, big)
    assert why.startswith("blockwise:") and "4096 MiB" in why, why
    assert blockwise.reference_bytes(big, big) > blockwise.AUTO_ABOVE_BYTES


def test_nan_propagates_and_empty_rows_are_zero():
    q, k, v = torch.randn(1, 5, 2), torch.randn(1, 7, 2), torch.randn(1, 7, 3)
    k[0, 2, 0] = float("nan")
    attn = PooledAttention(ScaledL1().float(), "soft", backend="blockwise")
    vl = torch.tensor([[2, 0, 7, 7, 1]])
    out = attn(q, k, v, valid_lens=vl)
    assert out[0, :2].isfinite().all() and out[0, 4].isfinite().all()  # key 2 not seen
    assert out[0, 1].eq(0).all()  # no valid key
    assert out[0, 2:4].isnan().all()  # the NaN key reaches these rows, like torch


def test_double_backward_raises():
    attn = PooledAttention(ScaledL1(), "soft", backend="blockwise")
    q = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="second derivatives through the blockwise backend"):
        torch.autograd.grad(attn(q, q, q).sum(), q, create_graph=True)


def test_multihead_runs_blockwise():
    torch.manual_seed(0)
    mh = attnzoo.create("multihead", embed_dim=8, num_heads=2, score="nadaraya_watson", backend="blockwise")
    ref = attnzoo.create("multihead", embed_dim=8, num_heads=2, score="nadaraya_watson", backend="reference")
    ref.load_state_dict(mh.state_dict())
    x = torch.randn(2, 300, 8)
    torch.testing.assert_close(mh(x, x, x), ref(x, x, x), rtol=1e-5, atol=1e-5)
