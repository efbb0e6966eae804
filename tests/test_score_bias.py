"""Positional terms added to the scores: a float ``bias=`` of the call (SDPA's float ``attn_mask``) and
ALiBi (``position="alibi"``), on every backend against SDPA and the formula, and the fused ops (their
``bias`` / ``alibi`` arguments, broadcasts, ``dbias``) against the float64 oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
import attnzoo.ops as ops
from attnzoo.ops import reference as ref

BACKENDS = ["reference", "fused", "blockwise"]
needs_ext = pytest.mark.skipif(not ops.EXTENSION, reason="attnzoo._C is not built")


def rnd(*shape, seed=0, dtype=torch.float64, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset).to(dtype)


def dist(nq, nk):
    i, j = torch.arange(nq).view(-1, 1), torch.arange(nk).view(1, -1)
    return (i - j).abs().to(torch.float64)


def _grads(out, inputs, seed=3):
    g = rnd(*out.shape, seed=seed, dtype=out.dtype)
    return torch.autograd.grad(out, inputs, g)


def _close(got, want, dtype):
    # float32: s + bias rounds to 3e-5 at |bias| ~ 1e3 (the un-centred bias below), moving p by as much
    tol = dict(atol=1e-10, rtol=1e-9) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-3)
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want.double(), atol=tol["atol"] * scale, rtol=tol["rtol"])


# bias shapes broadcast to (B, Nq, Nk) = (2, 37, 45): full, per key, per query, shared, one value
BIAS_SHAPES = [(2, 37, 45), (2, 1, 45), (37, 1), (37, 45), (1, 1, 1)]


@pytest.mark.parametrize("shape", BIAS_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_matches_sdpa_float_mask(backend, dtype, shape):
    """out and the gradients of query, key, value and bias equal SDPA's with attn_mask=bias (float64 SDPA on
    the same inputs); the bias is un-centred (values near 1e3) and some entries are -inf."""
    q, k, v = rnd(2, 37, 8, seed=1, dtype=dtype), rnd(2, 45, 8, seed=2, dtype=dtype), rnd(2, 45, 5, seed=4, dtype=dtype)
    bias = rnd(*shape, seed=5, dtype=dtype, scale=3.0, offset=1000.0)
    if bias.numel() > 1:
        bias.view(-1)[::7] = float("-inf")
    attn = attnzoo.create("soft", backend=backend)
    xs = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out = attn(*xs[:3], bias=xs[3])
    got = _grads(out, xs)
    ys = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    want_out = F.scaled_dot_product_attention(*ys[:3], attn_mask=ys[3])
    want = _grads(want_out, ys)
    _close(out, want_out, dtype)
    for x, y in zip(got, want, strict=True):
        assert x.shape == y.shape
        _close(x, y, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["soft", "hard"])
def test_bias_minus_inf_row_is_empty(backend, pooling):
    """A row whose keys all score -inf through the bias outputs zeros; nothing is NaN, gradients included."""
    q, k, v = rnd(2, 6, 4, seed=1), rnd(2, 7, 4, seed=2), rnd(2, 7, 3, seed=3)
    bias = rnd(2, 6, 7, seed=4).requires_grad_()
    with torch.no_grad():
        bias[0, 2] = float("-inf")
    q.requires_grad_()
    out, w = attnzoo.create(pooling, backend=backend)(q, k, v, bias=bias, return_weights=True)
    assert torch.equal(out[0, 2], torch.zeros(3, dtype=out.dtype)) and not w[0, 2].any()
    gq, gb = _grads(out, (q, bias))
    for t in (out, w, gq, gb):
        assert not t.isnan().any()
    assert not gb[0, 2].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_multihead_bias_is_per_head(backend):
    """bias broadcasts to (..., H, Nq, Nk): heads see their own bias (T5-style relative biases)."""
    torch.manual_seed(0)
    mha = attnzoo.create("multihead", embed_dim=8, num_heads=2, backend=backend).double()
    q, k = rnd(3, 5, 8, seed=1), rnd(3, 6, 8, seed=2)
    bias = rnd(2, 5, 6, seed=3, scale=4.0)
    out = mha(q, k, k, bias=bias)
    heads = lambda x, lin: lin(x).unflatten(-1, (2, 4)).transpose(-2, -3)  # noqa: E731
    o = F.scaled_dot_product_attention(heads(q, mha.W_q), heads(k, mha.W_k), heads(k, mha.W_v), attn_mask=bias)
    torch.testing.assert_close(out, mha.W_o(o.transpose(-2, -3).flatten(-2)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["soft", "hard", "local"])
def test_alibi_single_head(backend, pooling):
    """position="alibi": s_ij - m |i - j| with alibi_slope m, on every pooling (local: its window too)."""
    q, k, v = rnd(2, 20, 6, seed=1), rnd(2, 25, 6, seed=2), rnd(2, 25, 3, seed=3)
    opts = {"window": 3} if pooling == "local" else {}
    attn = attnzoo.create(pooling, position="alibi", alibi_slope=0.6, backend=backend, **opts)
    _, w = attn(q, k, v, return_weights=True)
    s = q @ k.transpose(-1, -2) / 6**0.5 - 0.6 * dist(20, 25)
    if pooling == "local":
        s = s.masked_fill(dist(20, 25) > 3, float("-inf"))
    want = s.softmax(-1)
    if pooling == "hard":
        want = F.one_hot(s.argmax(-1), 25).double()
    torch.testing.assert_close(w, want)
    assert "positional" in attn.capabilities


def test_alibi_default_slope_is_the_one_head_formula():
    q, k = rnd(1, 9, 4, seed=1), rnd(1, 9, 4, seed=2)
    _, w = attnzoo.create("soft", score="dot", position="alibi")(q, k, k, return_weights=True)
    torch.testing.assert_close(w, (q @ k.transpose(-1, -2) - 2**-8 * dist(9, 9)).softmax(-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_alibi_multihead_slopes(backend):
    """multihead position="alibi": head h = 1..H gets the slope 2^(-8h/H) (Press et al.)."""
    H, E, N = 4, 16, 11
    torch.manual_seed(0)
    mha = attnzoo.create("multihead", embed_dim=E, num_heads=H, position="alibi", backend=backend).double()
    x = rnd(2, N, E, seed=1, scale=3.0)
    _, w = mha(x, x, x, return_weights=True)
    heads = lambda t, lin: lin(t).unflatten(-1, (H, E // H)).transpose(-2, -3)  # noqa: E731
    slopes = torch.tensor([2 ** (-8 * h / H) for h in range(1, H + 1)], dtype=torch.float64)
    s = heads(x, mha.W_q) @ heads(x, mha.W_k).transpose(-1, -2) / (E // H) ** 0.5
    torch.testing.assert_close(w, (s - slopes.view(H, 1, 1) * dist(N, N)).softmax(-1))


def test_alibi_far_positions_float32_match_float64():
    """At N = 3000 the ALiBi term reaches 1500: the fused float32 output and gradients match float64."""
    N = 3000
    q, k, v = rnd(1, N, 16, seed=1, dtype=torch.float32), rnd(1, N, 16, seed=2, dtype=torch.float32), \
        rnd(1, N, 8, seed=3, dtype=torch.float32)
    attn = attnzoo.create("soft", position="alibi", alibi_slope=0.5)
    xs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attn(*xs)
    got = _grads(out, xs)
    ys = [t.double().requires_grad_() for t in (q, k, v)]
    out64 = attnzoo.create("soft", position="alibi", alibi_slope=0.5)(*ys)
    want = _grads(out64, ys)
    torch.testing.assert_close(out.double(), out64, atol=2e-5, rtol=1e-4)
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x.double(), y, atol=1e-5 * y.abs().max().item(), rtol=1e-3)


def test_bias_and_alibi_errors():
    q = rnd(2, 3, 4)
    soft = attnzoo.create("soft")
    with pytest.raises(TypeError, match="bias: expected a float tensor.*mask="):
        soft(q, q, q, bias=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bias: dtype torch.float32 differs"):
        soft(q, q, q, bias=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"bias: shape \(4, 3\) does not broadcast to \(2, 3, 3\)"):
        soft(q, q, q, bias=torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias: PooledAttention .*reads no scores"):
        attnzoo.create("average")(q, q, q, bias=torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="alibi_slope: only with position='alibi'"):
        attnzoo.create("soft", alibi_slope=0.5)
    with pytest.raises(ValueError, match="position: got 'alibi'"):  # a score's position is rotary only
        attnzoo.create("dot", position="alibi")
    mha = attnzoo.create("multihead", embed_dim=4, num_heads=2)
    with pytest.raises(ValueError, match=r"bias: shape \(3, 3, 3\) does not broadcast to \(2, 2, 3, 3\)"):
        mha(q, q, q, bias=torch.zeros(3, 3, 3, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input_bias_has_a_gradient(backend):
    q, k = rnd(2, 0, 4), rnd(2, 5, 4)
    bias = torch.zeros(2, 0, 5, dtype=torch.float64, requires_grad=True)
    attnzoo.create("soft", backend=backend)(q, k, k, bias=bias).sum().backward()
    assert bias.grad is not None and bias.grad.shape == bias.shape


# --- the fused ops: bias broadcasts over the (B1, B2) batch, dbias, alibi ------------------------------
# B = 6 = B1 x B2 = 2 x 3, Nq = 70, Nk = 150 (more than one key block)
OP_BIAS = {
    "full_3d": (6, 70, 150),
    "per_inner_batch": (1, 3, 70, 150),  # (H, Nq, Nk) of multi-head inputs
    "outer_keys": (2, 1, 1, 150),
    "per_query": (1, 1, 70, 1),
    "inner_keys": (1, 3, 1, 150),
}


def _op_inputs(family, dtype, seed=0):
    B, Nq, Nk, D, Dv = 6, 70, 150, 9, 5
    if family == "bilinear":
        return (rnd(B, Nq, D, seed=seed), rnd(B, Nk, D, seed=seed + 1), rnd(B, Nk, Dv, seed=seed + 2),
                rnd(B, Nk, seed=seed + 3), 0.7)
    # Gaussian Nadaraya-Watson on un-centred inputs (near 1e3): the exact-distance member
    return (rnd(B, Nq, D, seed=seed, offset=1e3), rnd(B, Nk, D, seed=seed + 1, offset=1e3),
            -0.2 * rnd(D, seed=seed + 2).abs(), rnd(B, Nk, Dv, seed=seed + 3))


def _op_calls(family):
    if family == "bilinear":
        return torch.ops.attnzoo.bilinear_fwd, ref.bilinear_fwd, torch.ops.attnzoo.bilinear_bwd, ref.bilinear_bwd
    c = (ref.SQ_DIFF, ref.IDENTITY)

    def with_codes(op, n):
        return lambda *x: op(*x[:n], *c, *x[n:])

    return (with_codes(torch.ops.attnzoo.elementwise_fwd, 4), with_codes(ref.elementwise_fwd, 4),
            with_codes(torch.ops.attnzoo.elementwise_bwd, 6), with_codes(ref.elementwise_bwd, 6))


def _f64(xs):
    return tuple(x.double() if torch.is_tensor(x) and x.is_floating_point() else x for x in xs)


@needs_ext
@pytest.mark.parametrize("pooling", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias_kind", [*OP_BIAS, "expanded_view", "none"])
@pytest.mark.parametrize("family", ["bilinear", "gaussian"])
def test_fused_ops_bias_alibi_match_oracle(family, bias_kind, dtype, pooling):
    """out, lse, argmax and every gradient (dbias summed over the bias's broadcast dims) against the float64
    oracle on the kernel's own inputs, with ALiBi slopes, a causal window and a stride-0 mask."""
    fwd, fwd_ref, bwd, bwd_ref = _op_calls(family)
    args = tuple(x.to(dtype) if torch.is_tensor(x) else x for x in _op_inputs(family, torch.float64))
    if bias_kind == "none":
        bias = None
    elif bias_kind == "expanded_view":  # stride 0 in the op's input: every position its own gradient
        bias = rnd(1, 70, 150, seed=9, dtype=dtype, scale=2.0).expand(6, 70, 150)
    else:
        # un-centred, except where float32 hard pooling would compare arg-maxes of near-ties that the
        # rounding of s + 300 (1.5e-5) flips
        offset = 0.0 if (pooling == 1 and dtype == torch.float32) else 300.0
        bias = rnd(*OP_BIAS[bias_kind], seed=9, dtype=dtype, scale=2.0, offset=offset)
    alibi = torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 2.0], dtype=dtype)
    mask = (rnd(6, 1, 150, seed=11) > -1).expand(6, 70, 150)
    margs = (None, mask, bias, alibi, pooling, True, 60)
    got = fwd(*args, *margs)
    want = fwd_ref(*_f64(args), *_f64(margs))
    for x, y in zip(got, want, strict=True):
        if x.dtype == torch.int64:
            assert torch.equal(x, y)
        else:
            _close(x, y, dtype)
    grad_out = rnd(*got[0].shape, seed=12, dtype=dtype)
    grads = bwd(grad_out, None, *args, *margs, bias is not None, *got[:4])
    grads_ref = bwd_ref(grad_out.double(), None, *_f64(args), *_f64(margs), bias is not None, *_f64(got[:4]))
    for x, y in zip(grads, grads_ref, strict=True):
        assert x.shape == y.shape and x.dtype == dtype
        _close(x, y, dtype)  # (a per-query bias's true gradient is 0: what float32 leaves is its rounding)
    if bias is not None:
        assert grads[-1].shape == bias.shape and (pooling == 2) == (not grads[-1].any())


@needs_ext
def test_fused_bias_converts_only_distinct_elements():
    """A bfloat16 bias on float32 inputs: converted (as a broadcast view) and added in float32."""
    q, k, v = rnd(2, 9, 4, seed=1, dtype=torch.float32), rnd(2, 11, 4, seed=2, dtype=torch.float32), \
        rnd(2, 11, 3, seed=3, dtype=torch.float32)
    b16 = rnd(1, 1, 9, 11, seed=4).to(torch.bfloat16).expand(2, 1, 9, 11)
    got = torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 1.0, None, None, b16, None, 0, False, -1)[0]
    want = ref.bilinear_fwd(q, k, v, None, 1.0, None, None, b16.float(), None, 0, False, -1)[0]
    torch.testing.assert_close(got, want)


@needs_ext
@pytest.mark.parametrize("family", ["bilinear", "gaussian"])
def test_fused_ops_bias_gradcheck_and_opcheck(family):
    fwd = torch.ops.attnzoo.bilinear_fwd if family == "bilinear" else torch.ops.attnzoo.elementwise_fwd
    bwd = torch.ops.attnzoo.bilinear_bwd if family == "bilinear" else torch.ops.attnzoo.elementwise_bwd
    if family == "bilinear":
        args = (rnd(4, 5, 3, seed=1), rnd(4, 7, 3, seed=2), rnd(4, 7, 2, seed=3), None, 0.9)
    else:
        args = (rnd(4, 5, 3, seed=1), rnd(4, 7, 3, seed=2), -rnd(3, seed=3).abs(), rnd(4, 7, 2, seed=4),
                ref.SQ_DIFF, ref.IDENTITY)
    bias = rnd(1, 2, 5, 7, seed=5).requires_grad_()
    alibi = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    n = 5 if family == "bilinear" else 6

    def out(b, x):
        return fwd(x, *args[1:n], None, None, b, alibi, 0, False, -1)[0]

    x = args[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(out, (bias, x), eps=1e-6, atol=1e-6)
    margs = (None, None, bias.detach(), alibi, 0, True, 3)
    torch.library.opcheck(fwd, (*args, *margs))
    saved = fwd(*args, *margs)
    torch.library.opcheck(bwd, (rnd(4, 5, 2, seed=6), None, *args, *margs, True, *saved[:4]))


@needs_ext
def test_fused_op_errors_name_the_argument():
    q = rnd(6, 3, 4)
    call = lambda bias=None, alibi=None: torch.ops.attnzoo.bilinear_fwd(  # noqa: E731
        q, q, q, None, 1.0, None, None, bias, alibi, 0, False, -1)
    with pytest.raises(RuntimeError, match=r"bias must be \(B1, B2, Nq, Nk\) .*got shape \(4, 3, 3\)"):
        call(bias=torch.zeros(4, 3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"bias must be .*got shape \(1, 4, 3, 3\)"):
        call(bias=torch.zeros(1, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="bias must be a float tensor"):
        call(bias=torch.zeros(6, 3, 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"alibi must have shape \(B,\)"):
        call(alibi=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="alibi: the slopes are constants"):
        ops.bilinear_attention(q, q, q, alibi=torch.zeros(6, dtype=torch.float64, requires_grad=True))
