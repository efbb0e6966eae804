"""Compiled CPU kernels of the attnzoo ops against the eager oracle ``attnzoo.ops.reference``."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

import attnzoo.ops as ops
from attnzoo.ops import reference as ref

if not ops.EXTENSION:
    pytest.skip(f"attnzoo._C is not built ({ops.EXTENSION_STATUS})", allow_module_level=True)

SOFT, HARD, AVERAGE = 0, 1, 2
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
MASKS = ["none", "valid_lens", "mask", "causal", "window", "all"]
# The elementwise family's members under test: (term, profile) of each.
ELEMENTWISE = {"additive": ("tanh", "identity"), "l1": ("abs_diff", "identity"), "gaussian": ("sq_diff", "identity"),
               "boxcar": ("sq_diff", "boxcar"), "epanechnikov": ("sq_diff", "epanechnikov")}
FAMILIES = ["bilinear", *ELEMENTWISE]
# (multiplier of |w|, or None: w as drawn): kernel widths keep the compact profiles' support partly full
_W_SCALE = {"additive": None, "l1": -0.3, "gaussian": -0.3, "boxcar": 0.05, "epanechnikov": 0.05}


def bwd_tol(family, dtype):
    """Gradient tolerance: Epanechnikov's g'(r) = -1 / (1 - r) magnifies the rounding of r near the
    support's edge (r -> 1), so its float32 gradients get the 1e-3 relative of a conditioned result."""
    if family == "epanechnikov" and dtype == torch.float32:
        return dict(atol=2e-4, rtol=1e-3)
    return TOL[dtype]


def codes(family):
    """The elementwise ops' (term, profile) codes of a family under test."""
    term, profile = ELEMENTWISE[family]
    return ref.TERMS[term], ref.PROFILES[profile]


def make_inputs(family, dtype, B, Nq, Nk, D=9, Dv=5, key_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    if family == "bilinear":
        return (rnd(B, Nq, D), rnd(B, Nk, D), rnd(B, Nk, Dv), rnd(B, Nk) if key_bias else None, 0.7)
    a, b, w, v = rnd(B, Nq, D), rnd(B, Nk, D), rnd(D), rnd(B, Nk, Dv)
    if _W_SCALE[family] is not None:
        w = (w.abs() * _W_SCALE[family]).to(dtype)
    return (a, b, w, v)


def attention(family, args, **kw):
    """The public wrapper of a family under test: (out, lse, argmax)."""
    if family == "bilinear":
        return ops.bilinear_attention(*args[:4], args[4], **kw)
    term, profile = ELEMENTWISE[family]
    return ops.elementwise_attention(*args, term=term, profile=profile, **kw)


def make_masks(kind, B, Nq, Nk, seed=0):
    """(valid_lens, mask, causal, window) for a mask configuration; rows with no valid key included."""
    g = torch.Generator().manual_seed(seed + 1)
    valid_lens = mask = None
    causal, window = False, -1
    if kind in ("valid_lens", "all"):
        valid_lens = torch.randint(0, Nk + 1, (B, Nq), generator=g)
        valid_lens[0, 0] = 0
    if kind in ("mask", "all"):
        mask = (torch.rand(B, 1, Nk, generator=g) > 0.3).expand(B, Nq, Nk)  # broadcast view, stride 0
    if kind in ("causal", "all"):
        causal = True
    if kind in ("window", "all"):
        window = 5 if kind == "window" else 40
    return valid_lens, mask, causal, window


def ops_for(family):
    if family == "bilinear":
        return torch.ops.attnzoo.bilinear_fwd, ref.bilinear_fwd, torch.ops.attnzoo.bilinear_bwd, ref.bilinear_bwd
    c = codes(family)

    def with_codes(op, n_before):  # the op with (term, profile) inserted after its first n_before arguments
        return lambda *x: op(*x[:n_before], *c, *x[n_before:])

    return (with_codes(torch.ops.attnzoo.elementwise_fwd, 4), with_codes(ref.elementwise_fwd, 4),
            with_codes(torch.ops.attnzoo.elementwise_bwd, 6), with_codes(ref.elementwise_bwd, 6))


def _to_float64(args):
    return tuple(a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)




def check_against_reference(family, dtype, pooling, B, Nq, Nk, masks="none", key_bias=True, grad_lse=True, D=9, Dv=5):
    fwd, fwd_ref, bwd, bwd_ref = ops_for(family)
    args = make_inputs(family, dtype, B, Nq, Nk, D=D, Dv=Dv, key_bias=key_bias)
    valid_lens, mask, causal, window = make_masks(masks, B, Nq, Nk)
    margs = (valid_lens, mask, None, None, pooling, causal, window)
    got = fwd(*args, *margs)
    # The oracle runs in float64 on the kernel's own (rounded) inputs: the float32 kernels are
    # held to the exact answer, not to eager float32's rounding of it.
    args64 = _to_float64(args)
    want = fwd_ref(*args64, *margs)
    for name, x, y in zip(("out", "lse", "argmax", "soft_out", "entropy"), got, want, strict=True):
        assert x.shape == y.shape, name
        if x.dtype == torch.int64:
            assert torch.equal(x, y), name
        else:
            assert x.dtype == (ref.acc_dtype(dtype) if name in ("lse", "entropy") else dtype), name
            torch.testing.assert_close(x, y.to(x.dtype), **TOL[dtype], msg=name)
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(got[0].shape, generator=g, dtype=torch.float64).to(dtype)
    glse = torch.randn(got[1].shape, generator=g, dtype=torch.float64).to(got[1].dtype) if grad_lse else None
    grads = bwd(grad_out, glse, *args, *margs, False, *got[:4])
    # (the oracle's backward reads the kernel's own saved outputs: bfloat16's rounded out enters D_i)
    grads_ref = bwd_ref(*_to_float64((grad_out, glse)), *args64, *margs, False, *_to_float64(got[:4]))
    for x, y in zip(grads, grads_ref, strict=True):
        assert x.shape == y.shape and x.dtype == dtype
        torch.testing.assert_close(x, y.to(x.dtype), **bwd_tol(family, dtype))
    for t in list(got) + list(grads):
        if t.is_floating_point():
            assert not t.isnan().any()


@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_reference(family, dtype, pooling, masks):
    check_against_reference(family, dtype, pooling, B=2, Nq=70, Nk=150, masks=masks)


@pytest.mark.parametrize(
    "B, Nq, Nk",
    [(1, 1, 1), (2, 5, 1), (1, 3, 17), (2, 300, 700), (1, 129, 513), (3, 33, 8)],
)
@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
@pytest.mark.parametrize("family", FAMILIES)
def test_awkward_sizes(family, pooling, B, Nq, Nk):
    masks = "all" if Nq * Nk > 1000 else "valid_lens"
    check_against_reference(family, torch.float64, pooling, B, Nq, Nk, masks=masks)


@pytest.mark.parametrize("pooling", [SOFT, HARD])
def test_no_key_bias_no_grad_lse(pooling):
    check_against_reference("bilinear", torch.float32, pooling, 2, 40, 90, masks="mask", key_bias=False, grad_lse=False)
    check_against_reference("additive", torch.float32, pooling, 2, 40, 90, masks="causal", grad_lse=False)


def _check_additive_scaled(a, b, w, v, pooling, masks):
    """additive fwd + bwd on given (float32 or float64) inputs against the float64 oracle."""
    dtype = a.dtype
    B, Nq, Nk = a.shape[0], a.shape[1], b.shape[1]
    valid_lens, mask, causal, window = make_masks(masks, B, Nq, Nk)
    margs = (valid_lens, mask, None, None, pooling, causal, window)
    args = (a, b, w, v)
    fwd, fwd_ref, bwd, bwd_ref = ops_for("additive")
    got = fwd(*args, *margs)
    want = fwd_ref(*[x.double() for x in args], *margs)
    for name, x, y in zip(("out", "lse", "argmax", "soft_out", "entropy"), got, want, strict=True):
        if x.dtype == torch.int64:
            assert torch.equal(x, y), name
        else:
            assert not x.isnan().any(), name
            torch.testing.assert_close(x.double(), y, **TOL[dtype], msg=name)
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(got[0].shape, generator=g, dtype=torch.float64).to(dtype)
    grads = bwd(grad_out, None, *args, *margs, False, *got[:4])
    outs = [x.double() if x.is_floating_point() else x for x in got]
    grads_ref = bwd_ref(grad_out.double(), None, *[x.double() for x in args], *margs, False, *outs[:4])
    for x, y in zip(grads, grads_ref, strict=True):
        assert not x.isnan().any()
        torch.testing.assert_close(x.double(), y, **TOL[dtype])


# The float32 forward evaluates tanh(a + b) as 1 - 2 / (1 + e^{2a} e^{2b}) when max |a|, |b| <= 20
# (csrc/cpu/elementwise_impl.h), else with the rational tanh: both sides of the guard, saturation included.
@pytest.mark.parametrize("masks", ["none", "all"])
@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", ["exp_form", "fallback_a", "fallback_b"])
def test_additive_large_inputs(scale, dtype, pooling, masks):
    a, b, w, v = make_inputs("additive", torch.float64, 2, 70, 150, D=40)
    if scale == "exp_form":  # saturated tanh, |a|, |b| up to just under the bound
        a, b = (a * 8).clamp(-19.9, 19.9), (b * 8).clamp(-19.9, 19.9)
        a[0, 0, 0], b[0, 0, 0], b[1, 3, 5] = 19.9, -19.9, 19.9
    elif scale == "fallback_a":  # one input past the bound: a * 30
        a = a * 30
    else:
        b = b * 30
        b[0, 0, 0] = float("inf")  # tanh(+inf) = 1: finite scores
    w = w / 4
    _check_additive_scaled(*(x.to(dtype) for x in (a, b, w, v)), pooling, masks)


@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16(family, pooling):
    check_against_reference(family, torch.bfloat16, pooling, 2, 37, 80, masks="all")


def _nonempty_rows(B, Nq, Nk, valid_lens, mask, causal, window):
    return ref.valid_matrix(B, Nq, Nk, "cpu", valid_lens, mask, causal, window).any(-1)


@pytest.mark.parametrize("masks", ["none", "all"])
@pytest.mark.parametrize("pooling", ["soft", "hard", "average"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck(family, pooling, masks):
    B, Nq, Nk = 2, 6, 7
    args = make_inputs(family, torch.float64, B, Nq, Nk, D=3, Dv=2)
    valid_lens, mask, causal, window = make_masks(masks, B, Nq, Nk)
    if masks == "all":
        window = 3
    rows = _nonempty_rows(B, Nq, Nk, valid_lens, mask, causal, window)
    kw = dict(valid_lens=valid_lens, mask=mask, pooling=pooling, causal=causal, window=None if window < 0 else window)
    tensors = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]

    def fn(*x):
        return attention(family, (*x, *tensors[4:]), **kw)

    inputs = tensors[:4]
    v_pos = 2 if family == "bilinear" else 3
    if pooling != "hard":
        assert torch.autograd.gradcheck(lambda *x: (fn(*x)[0], fn(*x)[1][rows]), inputs, eps=1e-6, atol=1e-6)
        return
    # Hard pooling's out is piecewise constant in the scores and its backward is straight-through
    # by design, so only lse (all inputs) and out (through v) have true gradients to check.
    assert torch.autograd.gradcheck(lambda *x: fn(*x)[1][rows], inputs, eps=1e-6, atol=1e-6)

    def out_of_v(v):
        x = list(inputs)
        x[v_pos] = v
        return fn(*x)[0]

    assert torch.autograd.gradcheck(out_of_v, (inputs[v_pos],), eps=1e-6, atol=1e-6)


def _opcheck_args(family, pooling):
    B, Nq, Nk = 2, 5, 9
    args = make_inputs(family, torch.float32, B, Nq, Nk, D=4, Dv=3)
    valid_lens, mask, causal, window = make_masks("all", B, Nq, Nk)
    return args, (valid_lens, mask, None, None, pooling, causal, window)


@pytest.mark.parametrize("pooling", [SOFT, HARD])
@pytest.mark.parametrize("family", FAMILIES)
def test_opcheck(family, pooling):
    name = "bilinear" if family == "bilinear" else "elementwise"
    fwd = getattr(torch.ops.attnzoo, f"{name}_fwd").default
    bwd = getattr(torch.ops.attnzoo, f"{name}_bwd").default
    args, margs = _opcheck_args(family, pooling)
    if name == "elementwise":
        margs = (*codes(family), *margs)
    torch.library.opcheck(fwd, (*args, *margs))
    grad_args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(fwd, (*grad_args, *margs))
    saved = fwd(*args, *margs)
    grad_out = torch.randn_like(saved[0])
    grad_lse = torch.randn_like(saved[1])
    torch.library.opcheck(bwd, (grad_out, grad_lse, *args, *margs, False, *saved[:4]))


@pytest.mark.parametrize("pooling", ["soft", "hard", "average"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fully_masked_rows_have_no_nan(family, pooling):
    B, Nq, Nk = 2, 4, 6
    args = [
        a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a
        for a in make_inputs(family, torch.float32, B, Nq, Nk)
    ]
    valid_lens = torch.full((B, Nq), Nk)
    valid_lens[0, 1] = 0
    mask = torch.ones(B, Nq, Nk, dtype=torch.bool)
    mask[1, 2] = False
    kw = dict(valid_lens=valid_lens, mask=mask, pooling=pooling)
    out, lse, argmax = attention(family, args, **kw)
    leaves = args[:4]
    empty = torch.zeros(B, Nq, dtype=torch.bool)
    empty[0, 1] = empty[1, 2] = True
    assert torch.equal(out[empty], torch.zeros_like(out[empty]))
    assert lse[empty].eq(float("-inf")).all() and lse[~empty].isfinite().all()
    if pooling == "hard":
        assert argmax[empty].eq(-1).all() and argmax[~empty].ge(0).all()
    (out.sum() + lse[~empty].sum()).backward()
    for t in leaves:
        assert t.grad is not None and t.grad.isfinite().all()
    a_like = leaves[0]
    assert torch.equal(a_like.grad[empty], torch.zeros_like(a_like.grad[empty]))


# --- small head dims (bilinear D <= 8, Dv <= 8: the key-vectorised single-sweep forward) ---------
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D, Dv", [(1, 1), (2, 3), (4, 8), (8, 1), (5, 6)])
def test_small_head_dims(D, Dv, dtype, pooling, masks):
    check_against_reference("bilinear", dtype, pooling, B=2, Nq=37, Nk=151, masks=masks, D=D, Dv=Dv)
    check_against_reference("gaussian", dtype, pooling, B=2, Nq=37, Nk=151, masks=masks, D=D, Dv=Dv)


@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
@pytest.mark.parametrize("B, Nq, Nk", [(1, 1, 1), (2, 5, 3), (1, 9, 17), (3, 33, 8), (1, 130, 1000)])
def test_small_head_dims_sizes(pooling, B, Nq, Nk):
    for dtype in (torch.float64, torch.float32):
        masks = "all" if Nk > 8 else "valid_lens"
        check_against_reference("bilinear", dtype, pooling, B, Nq, Nk, masks=masks, D=1, Dv=2)
        check_against_reference("bilinear", dtype, pooling, B, Nq, Nk, masks="none", key_bias=False, D=3, Dv=1)
        check_against_reference("gaussian", dtype, pooling, B, Nq, Nk, masks=masks, D=1, Dv=2)


def test_small_head_dims_bfloat16():
    for pooling in (SOFT, HARD, AVERAGE):
        for family in ("bilinear", "gaussian"):
            check_against_reference(family, torch.bfloat16, pooling, 2, 37, 80, masks="all", D=2, Dv=1)


def test_nadaraya_watson_float32_accuracy():
    """Scalar kernel regression, n = 4000: float32 kernel against the float64 oracle."""
    g = torch.Generator().manual_seed(3)
    n, w = 4000, 1.7
    x, xk = torch.rand(1, n, 1, generator=g) * 5, torch.rand(1, n, 1, generator=g) * 5
    yk = torch.sin(xk)
    kb = -0.5 * w * w * xk.view(1, n) ** 2
    got = torch.ops.attnzoo.bilinear_fwd(x, xk, yk, kb, w * w, None, None, None, None, SOFT, False, -1)
    want = ref.bilinear_fwd(x.double(), xk.double(), yk.double(), kb.double(), w * w, None, None, None, None, SOFT,
                            False, -1)
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1].double(), want[1], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pooling", [SOFT, HARD, AVERAGE])
def test_small_head_dims_neg_inf_scores(dtype, pooling):
    """-inf key_bias: rows whose valid keys all score -inf are empty (out 0, lse -inf), no NaN."""
    B, Nq, Nk = 2, 20, 37
    q, k, v, kb, scale = make_inputs("bilinear", dtype, B, Nq, Nk, D=2, Dv=3)
    kb[0, ::3] = float("-inf")
    kb[1, :] = float("-inf")
    kb[1, 30] = 0.5  # rows of batch 1 with key 30 masked out are empty
    valid_lens = torch.randint(0, Nk + 1, (B, Nq), generator=torch.Generator().manual_seed(5))
    margs = (valid_lens, None, None, None, pooling, False, -1)
    got = torch.ops.attnzoo.bilinear_fwd(q, k, v, kb, scale, *margs)
    want = ref.bilinear_fwd(q, k, v, kb, scale, *margs)
    for x, y in zip(got, want, strict=True):
        if x.dtype == torch.int64:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, **TOL[dtype])
    assert not got[0].isnan().any() and not got[1].isnan().any()


def test_hard_ties_pick_first_key():
    q = torch.ones(1, 3, 1)
    k = torch.tensor([0.0, 2.0, 1.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 1.0, 2.0]).view(1, -1, 1)
    v = torch.arange(11.0).view(1, -1, 1)
    valid_lens = torch.tensor([[11, 1, 4]])
    for dtype in (torch.float32, torch.float64):
        out, _, argmax, *_ = torch.ops.attnzoo.bilinear_fwd(
            q.to(dtype), k.to(dtype), v.to(dtype), None, 1.0, valid_lens, None, None, None, HARD, False, -1
        )
        assert argmax.tolist() == [[1, 0, 1]] and out.view(-1).tolist() == [1.0, 0.0, 1.0]


# Bitwise-equal keys must score equally wherever they lie (in a block, across block boundaries,
# in a GEMM's leftover columns), so that hard pooling picks the first of them on every path:
# the block driver (D > 8, block sizes per mask), the small-D sweep (D <= 8), both families.
TIE_NK = [5, 129, 300, 513, 1000]
TIE_NQ = [1, 2, 3, 5, 64, 257]


def _first_true(m):
    """First True index along the last dim of a bool tensor, -1 where there is none."""
    return torch.where(m.any(-1), m.to(torch.int8).argmax(-1), -1)


def _tie_inputs(family, dtype, B, Nq, Nk, D, gen):
    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    keys = rnd(1, 1, D).expand(B, Nk, D).contiguous()  # every key the same
    v = rnd(B, Nk, 3)
    if family == "bilinear":
        return (rnd(B, Nq, D), keys, v, None, 0.125)
    w = rnd(D)
    if family in ("boxcar", "epanechnikov"):  # every key inside the support
        w = (w.abs() * 1e-3 / D).to(dtype)
    return (rnd(B, Nq, D), keys, w, v)


@pytest.mark.parametrize("masks", ["none", "causal", "window"])
@pytest.mark.parametrize("D", [64, 9, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_hard_identical_keys_pick_the_first(family, dtype, D, masks):
    fwd = ops_for(family)[0]
    causal, window = masks == "causal", (40 if masks == "window" else -1)
    gen = torch.Generator().manual_seed(11)
    for Nk in TIE_NK:
        for Nq in TIE_NQ:
            args = _tie_inputs(family, dtype, 2, Nq, Nk, D, gen)
            out, _, argmax, *_ = fwd(*args, None, None, None, None, HARD, causal, window)
            want = _first_true(ref.valid_matrix(1, Nq, Nk, "cpu", None, None, causal, window)[0])
            bad = (argmax != want).nonzero()
            assert bad.numel() == 0, (f"Nk={Nk} Nq={Nq}: {len(bad)} rows pick another key, e.g. "
                                      f"row {tuple(bad[0].tolist())} -> {argmax[tuple(bad[0].tolist())].item()}")
            v = args[2] if family == "bilinear" else args[3]
            picked = v.gather(1, argmax.clamp_min(0).unsqueeze(-1).expand(-1, -1, v.shape[-1]))
            assert torch.equal(out, picked * (argmax >= 0).unsqueeze(-1))


@pytest.mark.parametrize("masks", ["none", "causal", "window"])
@pytest.mark.parametrize("D", [64, 3])
@pytest.mark.parametrize("family", ["bilinear", "additive"])  # (winning keys need a score that grows with them)
def test_hard_tied_maxima_across_block_boundaries_pick_the_first(family, D, masks):
    """Runs of bitwise-equal winning keys straddling the block sizes the kernels use (128, 256,
    512) among random keys: each row picks the first winning key it sees."""
    gen = torch.Generator().manual_seed(12)
    B, Nk = 2, 1100
    Nq = 70 if masks == "none" else Nk
    causal, window = masks == "causal", (64 if masks == "window" else -1)
    x = torch.randn(B, Nq, D, generator=gen).abs() + 0.1  # positive queries (q, a)
    keys = torch.randn(B, Nk, D, generator=gen)
    winner = torch.zeros(Nk, dtype=torch.bool)
    for lo, hi in [(120, 140), (250, 262), (505, 520), (1020, 1030)]:
        winner[lo:hi] = True
    keys[:, winner] = 4.0  # every query scores these keys highest (additive: positive w)
    v = torch.randn(B, Nk, 3, generator=gen)
    if family == "bilinear":
        args = (x, keys, v, None, 0.125)
    else:
        args = (x, keys, torch.rand(D, generator=gen) + 0.5, v)
    _, _, argmax, *_ = ops_for(family)[0](*args, None, None, None, None, HARD, causal, window)
    sees = ref.valid_matrix(1, Nq, Nk, "cpu", None, None, causal, window)[0] & winner  # (Nq, Nk)
    rows = sees.any(-1)
    assert rows.sum() >= 60
    assert torch.equal(argmax[:, rows], _first_true(sees)[rows].expand(B, -1))


# --- strided keys and values --------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["soft", "hard", "average"])
@pytest.mark.parametrize("nq", [1, 3, 40])  # few-rows scores, GEMM blocks
@pytest.mark.parametrize("D", [32, 4])  # (D = 4: the small-D kernel, which copies them)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keys_and_values_read_at_their_batch_stride(pooling, nq, D, dtype):
    """Views into a larger buffer (a KV cache's first positions: batch stride > Nk * D) and batch-expanded keys
    (stride 0), read in place by the forward, give exactly the results of contiguous copies, and the same
    gradients."""
    g = torch.Generator().manual_seed(0)
    kbuf, vbuf = (1e3 + torch.randn(6, 50, D, generator=g, dtype=dtype) for _ in range(2))
    q = torch.randn(6, nq, D, generator=g, dtype=dtype)
    lens = torch.tensor([[37], [5], [0], [37], [20], [36]]).repeat(1, nq)
    kw = dict(pooling=pooling, causal=True, q_offset=37 - nq, valid_lens=lens)
    for k, v in ((kbuf[:, :37], vbuf[:, :37]), (kbuf[:1, :37].expand(6, -1, -1), vbuf[2:3, 3:40].expand(6, -1, -1))):
        assert not k.is_contiguous() and not v.is_contiguous()
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        copies = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
        got, want = ops.bilinear_attention(*leaves, None, 0.01, **kw), ops.bilinear_attention(*copies, None, 0.01, **kw)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        go = torch.randn(got[0].shape, generator=g, dtype=dtype)
        for a, b in zip(torch.autograd.grad(got[0], leaves, go), torch.autograd.grad(want[0], copies, go), strict=True):
            assert torch.equal(a, b)


# --- threading ----------------------------------------------------------------------------------
@pytest.mark.parametrize("D", [64, 1])
def test_thread_counts_give_same_results(D):
    """torch.set_num_threads(1) and (2) both work (the kernels use at::parallel_for)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 300, D, generator=g, dtype=torch.float64) for _ in range(3))
    before = torch.get_num_threads()
    results = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
            out, lse, _ = ops.bilinear_attention(qq, kk, vv, scale=0.3, causal=True)
            (out.square().sum() + lse.sum()).backward()
            results.append([out, lse, qq.grad, kk.grad, vv.grad])
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(results[0], results[1], **TOL[torch.float64])  # block sizes depend on threads


def test_small_problems_leave_the_callers_blas_threads_alone():
    """A small problem runs its tasks on the calling thread with MKL kept serial there (csrc/cpu/blas.h); the
    thread's own MKL setting is restored after the call (left at 1, the user's matmuls would run serially)."""
    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    if not hasattr(lib, "mkl_set_num_threads_local_"):
        pytest.skip("torch built without MKL")
    local = lib.mkl_set_num_threads_local_
    local.restype = ctypes.c_int
    q, k, v = torch.randn(16, 1, 32), torch.randn(16, 300, 32), torch.randn(16, 300, 32)
    for setting in (0, 3):  # 0: MKL's global setting; 3: one the caller chose for its thread
        local(ctypes.byref(ctypes.c_int(setting)))
        ops.bilinear_attention(q, k, v, scale=0.2)
        assert local(ctypes.byref(ctypes.c_int(0))) == setting


_THREADS_SCRIPT = """
import os, torch, attnzoo.ops as ops
torch.set_num_threads(2)
x = torch.randn(4, 512, 64)
(x @ x.transpose(1, 2)).softmax(-1).sum()  # wake torch's OpenMP team
tasks = lambda: len(os.listdir("/proc/self/task"))
base = tasks()
q = x.clone().requires_grad_()
for _ in range(2):
    out = ops.bilinear_attention(q, q, q, scale=0.125)[0]
    out.sum().backward()
    ops.additive_attention(x[:, :128, :16], x[:, :128, :16], x[0, 0, :16], x[:, :128])
print(base, tasks())
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="counts /proc/self/task")
def test_no_extra_threads():
    """The kernels join torch's OpenMP team: no second runtime, no nested MKL teams."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True, check=True)
    base, after = map(int, res.stdout.split())
    assert after == base, res.stdout


def test_error_messages():
    q, k, v, _, scale = make_inputs("bilinear", torch.float32, 2, 3, 7)
    with pytest.raises(RuntimeError, match=r"key_bias must have shape \(Bk, Nk\) = \(2, 7\), got \(2, 5\)"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, torch.zeros(2, 5), scale, None, None, None, None, 0, False, -1)
    with pytest.raises(RuntimeError, match="valid_lens must be int64"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, scale, torch.zeros(2, 3), None, None, None, 0, False, -1)
    with pytest.raises(RuntimeError, match="pooling must be"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, scale, None, None, None, None, 3, False, -1)
    with pytest.raises(RuntimeError, match="window must be >= -1"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, scale, None, None, None, None, 0, False, -2)
    with pytest.raises(RuntimeError, match="must have the dtype of q"):
        torch.ops.attnzoo.bilinear_fwd(q, k.double(), v, None, scale, None, None, None, None, 0, False, -1)
    a, b, w, v = make_inputs("additive", torch.float32, 2, 3, 7)
    with pytest.raises(RuntimeError, match=r"w must have shape \(H,\)"):
        torch.ops.attnzoo.elementwise_fwd(a, b, w[:4], v, 0, 0, None, None, None, None, 0, False, -1)
    with pytest.raises(RuntimeError, match="mask must have shape"):
        torch.ops.attnzoo.elementwise_fwd(a, b, w, v, 0, 0, None, torch.ones(2, 3, 6, dtype=torch.bool), None, None, 0,
                                          False, -1)
    with pytest.raises(RuntimeError, match=r"term must be 0 \(tanh\), 1 \(abs_diff\) or 2 \(sq_diff\), got 3"):
        torch.ops.attnzoo.elementwise_fwd(a, b, w, v, 3, 0, None, None, None, None, 0, False, -1)
    with pytest.raises(RuntimeError, match=r"profile must be 0 \(identity\), 1 \(boxcar\) or 2 \(epanechnikov\)"):
        torch.ops.attnzoo.elementwise_fwd(a, b, w, v, 0, -1, None, None, None, None, 0, False, -1)
    with pytest.raises(ValueError, match="term: got 'cube'"):
        ops.elementwise_attention(a, b, w, v, term="cube")


# --- run-time ISA dispatch of the elementwise kernels and bilinear uniform scores (csrc/cpu/isa.h) ----
_ISA_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
import attnzoo._C
import test_fused_ops_cpu as t
torch.set_num_threads(2)
outs = []
for dtype in (torch.float32, torch.float64):
    for pooling in (t.SOFT, t.HARD, t.AVERAGE):
        for masks, (B, Nq, Nk) in [("none", (2, 70, 150)), ("all", (2, 70, 150)), ("window", (1, 129, 513)),
                                   ("valid_lens", (1, 3, 17))]:
            for family in t.ELEMENTWISE:
                t.check_against_reference(family, dtype, pooling, B, Nq, Nk, masks=masks)
                args = t.make_inputs(family, dtype, B, Nq, Nk, D=40)
                outs.append(t.ops_for(family)[0](*args, None, None, None, None, pooling, False, -1))
# ties: the bilinear family's uniform scores (compiled per ISA) and the elementwise terms (the tanh exp form)
for family in t.FAMILIES:
    for dtype in (torch.float32, torch.float64):
        t.test_hard_identical_keys_pick_the_first(family, dtype, 64, "none")
    if family in ("bilinear", "additive"):
        t.test_hard_tied_maxima_across_block_boundaries_pick_the_first(family, 64, "window")
args = t.make_inputs("bilinear", torch.float32, 2, 70, 600, D=40)
outs.append(torch.ops.attnzoo.bilinear_fwd(*args, None, None, None, None, t.HARD, False, -1))
torch.save(outs, {path!r})
print(attnzoo._C.build_info()["cpu_isa_runtime"])
"""


def _cpu_has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(x in flags for x in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))


@pytest.mark.skipif(
    ops.build_info().get("cpu_isa_runtime") in (None, "default"), reason="no run-time ISA dispatch in this build"
)
def test_isa_dispatch_paths_match_reference(tmp_path):
    """Both ISA paths (forced AVX2, and the auto choice: AVX-512 where the CPU has it) match the
    float64 oracle on the elementwise ops (forward and backward, tails included), break hard pooling's
    ties on the first key (both families) and agree."""
    import os
    import subprocess
    import sys

    from attnzoo import _C

    info = _C.build_info()
    results = {}
    for isa in ("avx2", "auto"):
        path = str(tmp_path / f"{isa}.pt")
        script = _ISA_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), path=path)
        env = dict(os.environ)
        env.pop("ATTNZOO_CPU_ISA", None)
        if isa == "avx2":
            env["ATTNZOO_CPU_ISA"] = "avx2"
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        used = res.stdout.split()[-1]
        if isa == "avx2":
            assert used == "avx2"
        elif info.get("cpu_isa_avx512_kernels"):
            assert used == ("avx512" if _cpu_has_avx512() else "avx2")
        results[isa] = torch.load(path)
    for x, y in zip(results["avx2"], results["auto"], strict=True):
        for u, w in zip(x, y, strict=True):
            if u.dtype == torch.int64:
                assert torch.equal(u, w)
            else:
                torch.testing.assert_close(u, w, **TOL[u.dtype])
