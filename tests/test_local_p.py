"""Local attention with a predicted centre (``create("local", predict_center=True, ...)``, Luong's local-p)
against an independent float64 formula, its gradients (the centre's parameters through the Gaussian),
float32 at long sequences, masks, no ``Nq x Nk`` tensor, errors."""

from __future__ import annotations

import pytest
import torch

import attnzoo

from .probes import LargestOutput


def rnd(*shape, seed=0, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset


def make(seed=0, **options):
    torch.manual_seed(seed)
    attn = attnzoo.create("local", predict_center=True, **{"query_dim": 6, "window": 3, **options}).double()
    with torch.no_grad():  # parameters far from their initial values
        for p in attn.parameters():
            p.mul_(1.5 + 2.0 * torch.rand_like(p))
    return attn


def formula(attn, q, k, valid, D):
    """Luong's local-p, as the paper writes it: the align weights times the Gaussian, renormalised in the window."""
    nk = k.shape[-2]
    W, v = attn.W_p.weight.detach().double(), attn.v_p.weight.detach().double()
    p = nk / (1 + torch.exp(-(torch.tanh(q @ W.T) @ v.T).squeeze(-1)))  # (..., Nq)
    s = attn.score(q, k).detach().double()
    j = torch.arange(nk, dtype=torch.float64)
    d = j - p.unsqueeze(-1)
    inside = (d.abs() <= D) & valid
    sigma = D / 2
    e = torch.exp(s - s.masked_fill(~inside, -torch.inf).amax(-1, keepdim=True).nan_to_num(0, 0, 0))
    e = e * torch.exp(-d**2 / (2 * sigma**2)) * inside
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total == 0, 1, total), p


@pytest.mark.parametrize("options", [{}, {"score": "additive", "key_dim": 6, "hidden_dim": 5, "center_hidden": 4},
                                     {"score": "cosine"}])
def test_against_formula(options):
    attn = make(**options)
    q, k, v = rnd(2, 40, 6, seed=1, offset=0.5), rnd(2, 60, 6, seed=2, offset=-0.3), rnd(2, 60, 3, seed=3, offset=1e3)
    lengths, mask = torch.tensor([60, 25]), rnd(2, 40, 60, seed=4) > -1.5
    out, w = attn(q, k, v, mask, valid_lens=lengths, return_weights=True)
    valid = mask & (torch.arange(60) < lengths.view(2, 1, 1))
    want, p = formula(attn, q, k, valid, 3)
    torch.testing.assert_close(attn.last_centers, p, atol=1e-12, rtol=0)
    assert p.min() < 20 and p.max() > 40  # centres spread over the sequence, not stuck at one place
    torch.testing.assert_close(w, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(out, want @ v, atol=1e-9, rtol=0)
    assert ((w > 0).sum(-1) <= 7).all() and ((w > 0).sum(-1) >= 2).any()


def test_gradcheck_and_centre_gradient():
    attn = make(window=2)
    q, k, v = (rnd(2, 4, 6, seed=5).requires_grad_(), rnd(2, 9, 6, seed=6).requires_grad_(),
               rnd(2, 9, 2, seed=7).requires_grad_())
    assert torch.autograd.gradcheck(lambda *x: attn(*x, valid_lens=torch.tensor([9, 5])), (q, k, v))
    out = attn(q, k, v)
    g_w, g_v = torch.autograd.grad((out * rnd(*out.shape, seed=8)).sum(), (attn.W_p.weight, attn.v_p.weight))
    assert g_w.abs().sum() > 0 and g_v.abs().sum() > 0  # the centre learns through the Gaussian
    # against finite differences of the loss in v_p (the centre's only path is p_i)
    eps, loss = 1e-6, lambda: (attn(q, k, v) * rnd(2, 4, 2, seed=8)).sum()
    with torch.no_grad():
        attn.v_p.weight[0, 0] += eps
        up = loss()
        attn.v_p.weight[0, 0] -= 2 * eps
        down = loss()
        attn.v_p.weight[0, 0] += eps
    assert abs(float(g_v[0, 0]) - float(up - down) / (2 * eps)) < 1e-5


def test_float32_long_sequence_against_float64():
    attn = make(window=4)
    q, k, v = rnd(1, 64, 6, seed=9), rnd(1, 20000, 6, seed=10, offset=2.0), rnd(1, 20000, 3, seed=11, offset=5.0)
    out64 = attn(q, k, v)
    p64 = attn.last_centers
    out32 = attn.float()(q.float(), k.float(), v.float())
    assert p64.max() > 10000  # far positions: j - p must not be formed from two large squares
    # float32 centres near 2e4 round to 1e-3: the weights move by that much times the Gaussian's slope
    torch.testing.assert_close(attn.last_centers.double(), p64, atol=4e-3, rtol=0)
    torch.testing.assert_close(out32.double(), out64, atol=2e-2, rtol=0)


def test_padding_garbage_and_empty_windows():
    attn = make()
    q, k, v = rnd(2, 30, 6, seed=12), rnd(2, 50, 6, seed=13), rnd(2, 50, 3, seed=14)
    lengths = torch.tensor([50, 10])
    out = attn(q, k, v, valid_lens=lengths)
    k2, v2 = k.clone(), v.clone()
    k2[1, 10:], v2[1, 10:] = float("nan"), 1e30
    torch.testing.assert_close(attn(q, k2, v2, valid_lens=lengths), out, atol=0, rtol=0)
    centres = attn.last_centers[1]
    far = centres - 3 > 10  # the window lies in the padding: no valid key, zero output
    assert far.any() and (out[1][far] == 0).all()


def test_no_square_tensor():
    attn = make(window=2).float()
    n = 2048
    q, k, v = (rnd(1, n, 6, seed=s).float().requires_grad_() for s in (1, 2, 3))
    with LargestOutput() as probe:
        attn(q, k, v).sum().backward()
    assert probe.largest <= 8 * n * 6, f"an op produced {probe.largest} elements (Nq x Nk = {n * n})"


@pytest.mark.parametrize("options,arg", [
    (dict(window=0, query_dim=6), "window"),
    (dict(window=2), "query_dim"),
    (dict(window=2, query_dim=6, causal=True), "causal"),
    (dict(window=2, query_dim=6, position="rope"), "position"),
    (dict(window=2, query_dim=6, backend="fused"), "backend"),
])
def test_errors(options, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        attnzoo.create("local", predict_center=True, **options)
    with pytest.raises(ValueError, match="predict_center"):
        attnzoo.create("local", center_hidden=3)
