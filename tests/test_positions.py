"""Rotary position embedding (``position="rope"``) and SDPA's ``scale=`` on the dot-product scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
import attnzoo.ops as ops
from attnzoo.positions import rope

BACKENDS = ["reference", "fused"] if ops.EXTENSION else ["reference"]


def _rope_complex(x, base, offset=0):
    """Independent form: feature pairs (j, j + d/2) as complex numbers times e^(i p theta_j), float64."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    p = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)
    ang = torch.outer(p, theta)
    z = z * torch.polar(torch.ones_like(ang), ang)
    return torch.cat((z.real, z.imag), -1)


@pytest.mark.parametrize("offset", [0, 37])
@pytest.mark.parametrize("d", [2, 8, 64])
def test_rope_matches_the_complex_rotation(d, offset):
    x = torch.randn(2, 3, 50, d, dtype=torch.float64) * 10 + 100  # un-centred
    torch.testing.assert_close(rope(x, 10000.0, offset), _rope_complex(x, 10000.0, offset), rtol=1e-12, atol=1e-9)
    x32 = x.float()
    torch.testing.assert_close(rope(x32, 500.0, offset).double(), _rope_complex(x32, 500.0, offset),
                               rtol=0, atol=float(x.abs().max()) * 4e-7)


def test_rope_scores_depend_on_the_offset_only():
    q, k = torch.randn(1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 16, dtype=torch.float64)
    s = [(rope(q, offset=i) @ rope(k, offset=j).mT).item() for i, j in ((3, 1), (10, 8), (102, 100))]
    assert s[0] == pytest.approx(s[1], rel=1e-12) and s[0] == pytest.approx(s[2], rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["dot", "scaled_dot"])
def test_rope_variants_equal_sdpa_on_rotated_inputs(variant, backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 32, generator=g) for n in (70, 90, 90))
    attn = attnzoo.create(variant, position="rope", rope_base=500.0, backend=backend)
    scale = 1.0 if variant == "dot" else 32**-0.5
    want = F.scaled_dot_product_attention(rope(q, 500.0), rope(k, 500.0), v, scale=scale, is_causal=True)
    causal = attnzoo.create(variant, position="rope", rope_base=500.0, backend=backend, causal=True)
    torch.testing.assert_close(causal(q, k, v), want, rtol=1e-5, atol=1e-5)
    qq = q.clone().requires_grad_()
    attn(qq, k, v).sum().backward()
    assert qq.grad.isfinite().all() and qq.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_multihead_rope_rotates_each_head(backend):
    torch.manual_seed(0)
    mh = attnzoo.create("multihead", embed_dim=16, num_heads=2, position="rope", backend=backend)
    x = torch.randn(2, 30, 16)
    heads = lambda t: t.unflatten(-1, (2, 8)).transpose(-2, -3)  # noqa: E731
    q, k, v = heads(mh.W_q(x)), heads(mh.W_k(x)), heads(mh.W_v(x))
    o = F.scaled_dot_product_attention(rope(q), rope(k), v)
    want = mh.W_o(o.transpose(-2, -3).flatten(-2))
    torch.testing.assert_close(mh(x, x, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_is_sdpas(backend):
    q, k, v = (torch.randn(2, 20, 8) for _ in range(3))
    got = attnzoo.create("scaled_dot", scale=0.05, backend=backend)(q, k, v)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, scale=0.05), rtol=1e-5, atol=1e-6)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="position: got 'alibi'"):
        attnzoo.create("scaled_dot", position="alibi")
    with pytest.raises(ValueError, match="rope_base: expected a number > 1"):
        attnzoo.create("dot", position="rope", rope_base=0)
    with pytest.raises(ValueError, match="scale: expected a number > 0"):
        attnzoo.create("scaled_dot", scale=-1.0)
    with pytest.raises(ValueError, match="position='rope': needs an even feature dim, got 3"):
        attnzoo.create("dot", position="rope")(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 3))


def test_rope_tables_are_cached_and_plain_tensors():
    """The cos/sin tables are built once per size; one first built under inference_mode still trains."""
    from attnzoo.positions import _rope_table, rope

    _rope_table.cache_clear()
    x = torch.randn(2, 13, 6, dtype=torch.float64)
    with torch.inference_mode():
        rope(x)
    y = x.clone().requires_grad_()
    rope(y).sum().backward()  # an inference tensor saved for backward would raise here
    assert y.grad is not None and _rope_table.cache_info().hits >= 1
