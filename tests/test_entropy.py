"""Attention entropy ``H_i = -sum_j w_ij log w_ij`` (``attnzoo.entropy``, ``return_entropy=True``) against an
independent float64 formula on every backend, its gradient (gradcheck, also through the blockwise pass),
the limits (uniform: log n, one-hot: 0, no key: 0), and the blockwise pass keeping no ``Nq x Nk`` tensor."""

from __future__ import annotations

import math

import pytest
import torch

import attnzoo
from attnzoo import variants

from .probes import LargestOutput

BACKENDS = ["reference", "fused", "blockwise"]


def rnd(*shape, seed=0, dtype=torch.float64, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


def formula(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """-sum p log p of the softmax over the valid keys, in float64 with log p from log_softmax."""
    s = scores.double().masked_fill(~valid, float("-inf"))
    live = valid.any(-1, keepdim=True)
    logp = torch.log_softmax(torch.where(live, s, 0.0), -1)
    p = logp.exp() * valid
    return -(p * torch.where(valid, logp, 0.0)).sum(-1)


@pytest.fixture(params=["dense", "blockwise_pass"])
def path(request, monkeypatch):
    """Dense (small) or the blockwise pass, forced by lowering the size above which it is used."""
    if request.param == "blockwise_pass":
        monkeypatch.setattr(variants, "ENTROPY_DENSE_ELEMENTS", 0)
    return request.param


def _scores(q, k, scale):
    return q @ k.transpose(-1, -2) * scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaled_dot_against_formula(backend, dtype, path):
    # un-centred inputs: scores near 1e3 with a spread of a few units, over 300 keys (two blocks)
    q, k, v = rnd(2, 260, 8, seed=1, offset=3.0), rnd(2, 300, 8, seed=2, offset=3.0), rnd(2, 300, 5, seed=3)
    q = q * 3
    lengths = torch.tensor([300, 117])
    mask = rnd(2, 260, 300, seed=4) > -1.0
    attn = attnzoo.create("scaled_dot", backend=backend)
    out, ent = attn(q.to(dtype), k.to(dtype), v.to(dtype), mask, valid_lens=lengths, return_entropy=True)
    assert ent.shape == (2, 260) and ent.dtype == dtype
    valid = mask & (torch.arange(300) < lengths.view(2, 1, 1))
    want = formula(_scores(q, k, 8 ** -0.5), valid)
    assert want.max() > 1.0  # spread rows: the check is not about near-one-hot weights
    tol = 1e-9 if dtype == torch.float64 else 2e-3  # float32 scores near 1e3 round to 6e-5
    torch.testing.assert_close(ent.double(), want, atol=tol, rtol=0)
    torch.testing.assert_close(out.double(), attn(q, k, v, mask, valid_lens=lengths), atol=tol * 10, rtol=0)


@pytest.mark.parametrize("name,options", [
    ("additive", dict(query_dim=6, key_dim=6, hidden_dim=16)),
    ("local", dict(window=3, score="cosine")),
    ("soft", dict(score="general", query_dim=6, key_dim=6)),
    ("nadaraya_watson", dict(kernel="gaussian")),
    ("soft", dict(position="alibi", alibi_slope=0.5)),
])
def test_variants_against_their_weights(name, options, path):
    torch.manual_seed(0)
    attn = attnzoo.create(name, **options).double()
    with torch.no_grad():  # parameters far from their initial values
        for p in attn.parameters():
            p.mul_(1.5 + 0.5 * torch.randn_like(p))
    q, k, v = rnd(3, 270, 6, seed=5), rnd(3, 290, 6, seed=6), rnd(3, 290, 4, seed=7)
    lengths = torch.tensor([290, 3, 0])
    out, w = attn(q, k, v, valid_lens=lengths, return_weights=True)
    out2, ent = attn(q, k, v, valid_lens=lengths, return_entropy=True)
    logw = torch.where(w > 0, w, 1.0).log()
    torch.testing.assert_close(ent, -(w * logw).sum(-1), atol=1e-9, rtol=0)
    torch.testing.assert_close(out2, out, atol=1e-12, rtol=0)
    assert (ent[2] == 0).all()  # no valid key


def test_multihead_per_head(path):
    torch.manual_seed(0)
    attn = attnzoo.create("multihead", embed_dim=8, num_heads=2, score="additive", hidden_dim=8).double()
    x = rnd(2, 280, 8, seed=8)
    mask = rnd(2, 1, 280, seed=9) > -0.5
    out, w = attn(x, x, x, mask, return_weights=True)
    out2, ent = attn(x, mask=mask, return_entropy=True)
    assert ent.shape == (2, 2, 280)
    torch.testing.assert_close(ent, formula(torch.where(w > 0, w, 1.0).log(), w > 0), atol=1e-9, rtol=0)
    torch.testing.assert_close(out2, out, atol=1e-12, rtol=0)


def test_limits():
    x, v = rnd(2, 4, 8), rnd(2, 50, 3)
    keys = rnd(2, 50, 8)
    lengths = torch.tensor([50, 7])
    avg = attnzoo.create("average")(x, keys, v, valid_lens=lengths, return_entropy=True)[1]
    torch.testing.assert_close(avg, torch.log(lengths.double()).view(2, 1).expand(2, 4))
    soft = attnzoo.create("scaled_dot")(torch.zeros_like(x), keys, v, valid_lens=lengths, return_entropy=True)[1]
    torch.testing.assert_close(soft, torch.log(lengths.double()).view(2, 1).expand(2, 4))  # equal scores
    hard = attnzoo.create("hard")(x, keys, v, return_entropy=True)[1]
    assert (hard == 0).all()
    sharp = attnzoo.create("dot")(1e4 * keys[:, :4], keys, v, return_entropy=True)[1]
    assert sharp.abs().max() < 1e-6  # each query attends its own key only


def test_compact_support_rows_without_a_key_in_reach(path):
    # boxcar kernel: keys farther than its support get a -inf score; a query with none in reach has no key
    attn = attnzoo.create("nadaraya_watson", kernel="boxcar", backend="reference").double()
    x = torch.tensor([0.0, 0.1, 0.2, 5.0, 9.0], dtype=torch.float64).view(1, 5, 1).requires_grad_()
    keys = torch.tensor([0.0, 0.15, 0.3, 8.9], dtype=torch.float64).view(1, 4, 1)
    out, w, ent = attn(x, keys, keys, return_weights=True, return_entropy=True)
    assert torch.isfinite(ent).all() and ent[0, 3] == 0
    torch.testing.assert_close(ent, -(w * torch.where(w > 0, w, 1.0).log()).sum(-1))
    ent.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_function_and_self_attention_forms():
    attn = attnzoo.create("cosine")
    x = rnd(2, 6, 4, seed=11)
    torch.testing.assert_close(attnzoo.entropy(attn, x), attn(x, x, x, return_entropy=True)[1])
    out, w, ent = attn(x, return_weights=True, return_entropy=True)
    torch.testing.assert_close(out, w @ x)


@pytest.mark.parametrize("name", ["scaled_dot", "additive"])
def test_gradcheck(name, path):
    torch.manual_seed(0)
    options = dict(query_dim=3, key_dim=3, hidden_dim=4) if name == "additive" else {}
    attn = attnzoo.create(name, backend="blockwise" if path == "blockwise_pass" else "auto", **options).double()
    q, k, v = rnd(2, 4, 3, seed=1), rnd(2, 5, 3, seed=2), rnd(2, 5, 2, seed=3)
    lengths = torch.tensor([5, 2])
    for t in (q, k, v):
        t.requires_grad_(True)

    def fn(q, k, v):
        out, ent = attn(q, k, v, valid_lens=lengths, return_entropy=True)
        return out, ent

    assert torch.autograd.gradcheck(fn, (q, k, v))
    if name == "additive":  # the score's parameters too
        w = next(attn.parameters())
        ent = attn(q, k, v, valid_lens=lengths, return_entropy=True)[1]
        (g,) = torch.autograd.grad(ent.sum(), w)
        eps, i = 1e-6, (0,) * w.dim()
        with torch.no_grad():
            w[i] += eps
            up = attn(q, k, v, valid_lens=lengths, return_entropy=True)[1].sum()
            w[i] -= 2 * eps
            down = attn(q, k, v, valid_lens=lengths, return_entropy=True)[1].sum()
            w[i] += eps
        assert abs(float(g[i]) - float(up - down) / (2 * eps)) < 1e-6


def test_float32_gradient_against_float64(path):
    # un-centred keys and a large query scale: sharp but not one-hot rows
    q, k = rnd(2, 300, 16, seed=21, scale=0.6), rnd(2, 320, 16, seed=22, offset=50.0)
    k = k - k.mean(-2, keepdim=True) + rnd(2, 1, 16, seed=23, scale=30.0)
    v = rnd(2, 320, 4, seed=24)
    attn = attnzoo.create("scaled_dot")
    grads = {}
    for dtype in (torch.float64, torch.float32):
        qq, kk = q.to(dtype).requires_grad_(), k.to(dtype).requires_grad_()
        ent = attn(qq, kk, v.to(dtype), return_entropy=True)[1]
        grads[dtype] = (ent.detach().double(), *torch.autograd.grad(ent.sum(), (qq, kk)))
    for got, want in zip(grads[torch.float32], grads[torch.float64], strict=True):
        scale = float(want.abs().max())
        torch.testing.assert_close(got.double(), want, atol=2e-4 * max(scale, 1.0), rtol=1e-3)


def test_empty_inputs_and_rows_have_gradients(path):
    attn = attnzoo.create("scaled_dot")
    q, k, v = rnd(2, 3, 4).requires_grad_(), rnd(2, 0, 4).requires_grad_(), rnd(2, 0, 2).requires_grad_()
    out, ent = attn(q, k, v, return_entropy=True)
    assert ent.shape == (2, 3) and (ent == 0).all()
    ent.sum().backward()
    assert (q.grad == 0).all()
    q2, k2 = rnd(2, 3, 4).requires_grad_(), rnd(2, 6, 4).requires_grad_()
    ent = attn(q2, k2, rnd(2, 6, 2), valid_lens=torch.tensor([0, 6]), return_entropy=True)[1]
    assert (ent[0] == 0).all() and (ent[1] > 0).all()
    ent.sum().backward()
    assert torch.isfinite(q2.grad).all() and (q2.grad[0] == 0).all()


@pytest.mark.parametrize("n", [4096, pytest.param(16384, marks=pytest.mark.slow)])
def test_long_sequence_keeps_no_square_tensor(n):
    q, k, v = rnd(1, n, 8, seed=1).requires_grad_(), rnd(1, n, 8, seed=2).requires_grad_(), rnd(1, n, 2, seed=3)
    attn = attnzoo.create("scaled_dot", causal=True)
    with LargestOutput() as probe:
        out, ent = attn(q.float(), k.float(), v.float(), return_entropy=True)
        ent.sum().backward()
    assert probe.largest <= 256 * n, f"an op produced {probe.largest} elements (Nq x Nk = {n * n})"
    assert ent.shape == (1, n)
    # query i attends keys 0..i: its entropy is at most log(i + 1)
    assert (ent.double() <= torch.log(torch.arange(1, n + 1, dtype=torch.float64)) + 1e-4).all()
    assert math.isclose(float(ent[0, 0].detach()), 0.0, abs_tol=1e-6)
