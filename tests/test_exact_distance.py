"""Distance scores are computed as distances: Nadaraya-Watson in float32 on un-centred data (offsets up to
1e4 times the spread) and widths 1-100 matches a float64 direct-distance formula evaluated on the same
float32 inputs: weights to 1e-4, output to 1e-4 of max |v|, every gradient (the width's included) to 1e-3
relative. The fused kernels square ``q - k`` themselves (the elementwise family's ``(a - b)^2`` term);
expanding ``|q|^2 - 2 q.k + |k|^2`` fails this by orders of magnitude."""

from __future__ import annotations

import pytest
import torch

import attnzoo
import attnzoo.ops as ops

BACKENDS = ["reference", "fused"] if ops.EXTENSION else ["reference"]


def _direct(q, k, v, w, kernel):
    """float64 weights and output from the distances ``u = |(q - k) w|`` themselves."""
    u2 = (((q.unsqueeze(-2) - k.unsqueeze(-3)) * w) ** 2).sum(-1)
    if kernel == "gaussian":
        s = -0.5 * u2
    elif kernel == "boxcar":
        s = torch.where(u2 <= 1, torch.zeros_like(u2), torch.full_like(u2, float("-inf")))
    else:
        inside = u2 < 1  # (log1p of the outside masked first: its gradient would be NaN)
        s = torch.where(inside, torch.log1p(-u2.where(inside, 0.0)), torch.full_like(u2, float("-inf")))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v, p


def _data(offset, spread, D, seed):
    g = torch.Generator().manual_seed(seed)
    x = offset + spread * torch.rand(2, 240, D, generator=g, dtype=torch.float64)
    q, k = x[:, :40].float(), x[:, 40:].float()  # queries among the keys, as in kernel regression
    v = torch.sin(k.double().sum(-1, keepdim=True) / spread).float().expand(-1, -1, 3).contiguous()
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov", "boxcar"])
@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("offset", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("width", [1.0, 10.0, 100.0])
def test_float32_matches_direct_distances(width, offset, D, kernel, backend):
    spread = 1.0 if kernel == "gaussian" else 50.0 / width  # compact kernels: some keys inside the support
    q, k, v = _data(offset * spread, spread, D, seed=int(width) + D)
    attn = attnzoo.create("nadaraya_watson", kernel=kernel, learnable=True, w=width / spread, backend=backend)
    q32, k32, v32 = (x.clone().requires_grad_() for x in (q, k, v))
    out, w = attn(q32, k32, v32, return_weights=True)

    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    width64 = attn.score.w.detach().double().requires_grad_()
    want, p = _direct(q64, k64, v64, width64, kernel)
    assert (p.amax(-1) < 0.999).any(), "a vacuous case: every row one-hot"
    torch.testing.assert_close(w.double(), p, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.double(), want, atol=1e-4 * float(v.abs().max()), rtol=0)
    if kernel == "boxcar":
        return  # piecewise constant in q, k and w
    g = torch.Generator().manual_seed(5)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * grad_out.float()).sum().backward()
    (want * grad_out).sum().backward()
    for name, got, ref in (("q", q32.grad, q64.grad), ("k", k32.grad, k64.grad), ("v", v32.grad, v64.grad),
                           ("w", attn.score.w.grad, width64.grad)):
        scale = float(ref.abs().max())
        torch.testing.assert_close(got.double(), ref, atol=1e-3 * scale, rtol=0, msg=f"d{name}")
