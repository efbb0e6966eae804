"""CUDA kernels of the attnzoo ops against the eager oracle (attnzoo.ops.reference).

Every comparison runs the reference on CPU float64 copies of the (already rounded) inputs.
Needs a CUDA device and an extension built with CUDA (``pip install --no-build-isolation -e .``
with a CUDA build of torch); skipped otherwise.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import attnzoo.ops as ops
from attnzoo.ops import reference as ref


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if "cuda" not in ops.compiled_devices():
        return (
            f"attnzoo extension not built with CUDA (compiled_devices={ops.compiled_devices()}, {ops.EXTENSION_STATUS})"
        )
    return None


_REASON = _skip_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)
pytestmark = pytest.mark.cuda

DEV = "cuda"
TOL = {  # (atol, rtol) forward; backward uses 5x
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (2e-2, 2e-2),
}
POOLINGS = {"soft": 0, "hard": 1, "average": 2}
# The elementwise family's members under test: (term, profile), and the scale of |w| (None: w as drawn)
ELEMENTWISE = {"additive": (("tanh", "identity"), None), "l1": (("abs_diff", "identity"), -0.3),
               "gaussian": (("sq_diff", "identity"), -0.3), "boxcar": (("sq_diff", "boxcar"), 0.05),
               "epanechnikov": (("sq_diff", "epanechnikov"), 0.05)}


def _codes(family):
    term, profile = ELEMENTWISE[family][0]
    return ref.TERMS[term], ref.PROFILES[profile]
FAMILIES = ["bilinear", *ELEMENTWISE]


def _ops(family):
    """(fwd, reference fwd, bwd, reference bwd) of a family; elementwise ones with its codes inserted."""
    if family == "bilinear":
        return torch.ops.attnzoo.bilinear_fwd, ref.bilinear_fwd, torch.ops.attnzoo.bilinear_bwd, ref.bilinear_bwd
    c = _codes(family)

    def with_codes(op, n):
        return lambda *x: op(*x[:n], *c, *x[n:])

    return (with_codes(torch.ops.attnzoo.elementwise_fwd, 4), with_codes(ref.elementwise_fwd, 4),
            with_codes(torch.ops.attnzoo.elementwise_bwd, 6), with_codes(ref.elementwise_bwd, 6))

# name -> (valid_lens?, mask kind, causal, window)
MASKS = {
    "none": (False, None, False, -1),
    "valid_lens": (True, None, False, -1),  # includes empty rows (valid_len 0)
    "mask_bcast": (False, "bcast", False, -1),  # (B, 1, Nk) expanded: stride 0 over queries
    "mask_full": (False, "full", False, -1),
    "causal": (False, None, True, -1),
    "window": (False, None, False, 5),
    "all": (True, "full", True, 9),
}


def _mask_args(B, Nq, Nk, kind, gen):
    use_vl, mask_kind, causal, window = MASKS[kind]
    vl = mask = None
    if use_vl:
        vl = torch.randint(0, Nk + 1, (B, Nq), generator=gen)
        vl[0, 0] = 0  # an empty row
        vl[-1, -1] = Nk
    if mask_kind == "bcast":
        mask = (torch.rand(B, 1, Nk, generator=gen) > 0.3).expand(B, Nq, Nk)
    elif mask_kind == "full":
        mask = torch.rand(B, Nq, Nk, generator=gen) > 0.3
        mask[0, 1] = False  # an empty row
    return vl, mask, causal, window


def _dev(x):
    return None if x is None else x.to(DEV)


def _cpu64(x):
    if x is None:
        return None
    return x.detach().cpu().to(torch.float64) if x.is_floating_point() else x.detach().cpu()


def _close(got, want, dtype, what, factor=1.0):
    atol, rtol = TOL[dtype]
    got = got.detach().cpu()
    want = want.detach().cpu()
    if got.is_floating_point():
        got = got.to(torch.float64)
        want = want.to(torch.float64)
        # -inf lse of empty rows must match exactly
        assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: inf pattern differs"
        fin = torch.isfinite(want)
        torch.testing.assert_close(
            got[fin], want[fin], atol=atol * factor, rtol=rtol * factor, msg=lambda m: f"{what}: {m}"
        )
    else:
        assert torch.equal(got, want), f"{what}: {got} != {want}"


def _inputs(family, dtype, B, Nq, Nk, D, Dv, with_bias, gen):
    def r(*s):
        return torch.randn(*s, generator=gen).to(dtype)

    if family == "bilinear":
        q, k, v = r(B, Nq, D), r(B, Nk, D), r(B, Nk, Dv)
        kb = r(B, Nk) if with_bias else None
        return (q, k, v, kb)
    a, b, w, v = r(B, Nq, D), r(B, Nk, D), r(D) * 0.5, r(B, Nk, Dv)
    scale = ELEMENTWISE[family][1]
    if scale is not None:
        w = (w.abs() * 2 * scale).to(dtype)
    return (a, b, w, v)


def _fwd(family, tensors, scale, margs, device_fn):
    t = [device_fn(x) for x in tensors]
    if family == "bilinear":
        return t, (t[0], t[1], t[2], t[3], scale, *margs)
    return t, (*t, *margs)


def _run_case(family, dtype, pooling, mask_kind, B=2, Nq=37, Nk=70, D=24, Dv=20, with_bias=True, seed=0,
              positions=None):
    """positions: None, or the float bias's kind ("shared": (1, 1, Nq, Nk) over the batch, the atomic dbias;
    "full": (B, Nq, Nk)), with ALiBi slopes."""
    gen = torch.Generator().manual_seed(seed)
    tensors = _inputs(family, dtype, B, Nq, Nk, D, Dv, with_bias, gen)
    vl, mask, causal, window = _mask_args(B, Nq, Nk, mask_kind, gen)
    scale = 0.37
    pool = POOLINGS[pooling]
    fwd_op, ref_fwd, bwd_op, ref_bwd = _ops(family)

    bias = alibi = None
    if positions is not None:
        bias = torch.randn(*((1, 1, Nq, Nk) if positions == "shared" else (B, Nq, Nk)), generator=gen).to(dtype)
        alibi = torch.linspace(0.05, 0.5, B).to(dtype)
    bias_grad = bias is not None
    margs_d = (_dev(vl), _dev(mask), _dev(bias), _dev(alibi), pool, causal, window)
    margs_c = (vl, mask, _cpu64(bias), _cpu64(alibi), pool, causal, window)
    td, args_d = _fwd(family, tensors, scale, margs_d, _dev)
    tc, args_c = _fwd(family, tensors, scale, margs_c, _cpu64)
    got = fwd_op(*args_d)
    want = ref_fwd(*args_c)
    assert got[0].dtype == dtype and got[0].device.type == "cuda"
    assert got[1].dtype == ref.acc_dtype(dtype)
    for name, g, w in zip(("out", "lse", "argmax", "soft_out", "entropy"), got, want, strict=True):
        if name == "argmax" and dtype in (torch.float16, torch.bfloat16) and pooling == "hard":
            # near-ties may break differently in low precision: check consistency instead
            assert torch.equal((g.cpu() < 0), (w < 0)), "argmax: empty rows differ"
            continue
        if name == "out" and dtype in (torch.float16, torch.bfloat16) and pooling == "hard":
            continue
        assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        _close(g, w, dtype, f"{family}/{pooling}/{mask_kind}/{dtype} fwd {name}")

    # backward: each side with its own saved outputs; random grad_out and grad_lse
    Dv_ = tensors[2].shape[-1] if family == "bilinear" else tensors[3].shape[-1]
    grad_out = torch.randn(B, Nq, Dv_, generator=gen).to(dtype)
    grad_lse = torch.randn(B, Nq, generator=gen).to(ref.acc_dtype(dtype))
    if family == "bilinear":
        gd = bwd_op(_dev(grad_out), _dev(grad_lse), td[0], td[1], td[2], td[3], scale, *margs_d, bias_grad,
                    *got[:4])
        gw = ref_bwd(_cpu64(grad_out), _cpu64(grad_lse), tc[0], tc[1], tc[2], tc[3], scale, *margs_c, bias_grad,
                     *want[:4])
        names = ("dq", "dk", "dv", "dkey_bias", "dbias")
    else:
        gd = bwd_op(_dev(grad_out), _dev(grad_lse), *td, *margs_d, bias_grad, *got[:4])
        gw = ref_bwd(_cpu64(grad_out), _cpu64(grad_lse), *tc, *margs_c, bias_grad, *want[:4])
        names = ("da", "db", "dw", "dv", "dbias")
    for name, g, w in zip(names, gd, gw, strict=True):
        assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        if g.numel():
            assert g.dtype == dtype
        _close(g, w, dtype, f"{family}/{pooling}/{mask_kind}/{dtype} bwd {name}", factor=5.0)


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


# float16 at D = Dv = 64: the tensor-core forward adds the positional terms too
@pytest.mark.parametrize("dtype, D", [(torch.float64, 24), (torch.float32, 24), (torch.float16, 64)], ids=str)
@pytest.mark.parametrize("positions", ["shared", "full"])
@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_positions_against_reference(family, pooling, positions, dtype, D):
    _run_case(family, dtype, pooling, "all", D=D, Dv=D, positions=positions)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pooling", list(POOLINGS))
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_against_reference(family, mask_kind, pooling, dtype):
    _run_case(family, dtype, pooling, mask_kind)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_dims(family, dtype):
    """D and Dv above one output chunk (64) and not multiples of the tiles; no key_bias."""
    _run_case(family, dtype, "soft", "all", B=2, Nq=45, Nk=100, D=70, Dv=130, with_bias=False, seed=1)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("pooling", ["soft", "hard"])
@pytest.mark.parametrize("mask_kind", ["none", "valid_lens", "mask_bcast", "causal", "window", "all"])
def test_tensor_core_forward(mask_kind, pooling, dtype, D):
    """Head sizes that take the mma.sync kernel (fp16/bf16, D == Dv in {64, 128}), several tiles."""
    _run_case("bilinear", dtype, pooling, mask_kind, B=3, Nq=150, Nk=200, D=D, Dv=D, seed=2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_tensor_core_matches_generic(monkeypatch, dtype):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 130, 64, generator=gen).to(dtype).to(DEV) for _ in range(3))
    kb = torch.randn(2, 130, generator=gen).to(dtype).to(DEV)
    args = (q, k, v, kb, 0.125, None, None, None, None, 0, True, 17)
    fast = torch.ops.attnzoo.bilinear_fwd(*args)
    monkeypatch.setenv("ATTNZOO_CUDA_NO_MMA", "1")
    slow = torch.ops.attnzoo.bilinear_fwd(*args)
    torch.testing.assert_close(fast[0], slow[0], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(fast[1], slow[1], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("D", [64, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
def test_hard_identical_keys_pick_the_first(family, dtype, D):
    """Bitwise-equal keys score equally wherever they lie (tiles, tile edges, the tensor-core
    fragments for float16 / bfloat16 with D = Dv = 64): hard pooling picks the first valid one."""
    gen = torch.Generator().manual_seed(13)
    fwd = _ops(family)[0]
    for Nk in (5, 129, 300, 513):
        for Nq in (1, 3, 64, 257):
            for causal, window in ((False, -1), (True, -1), (False, 40)):
                q = torch.randn(2, Nq, D, generator=gen).to(dtype)
                k = torch.randn(1, 1, D, generator=gen).to(dtype).expand(2, Nk, D).contiguous()
                v = torch.randn(2, Nk, D, generator=gen).to(dtype)
                if family == "bilinear":
                    args = (_dev(q), _dev(k), _dev(v), None, 0.125)
                else:
                    args = (_dev(q), _dev(k), _dev(torch.randn(D, generator=gen).to(dtype)), _dev(v))
                _, _, argmax, *_ = fwd(*args, None, None, None, None, POOLINGS["hard"], causal, window)
                valid = ref.valid_matrix(1, Nq, Nk, "cpu", None, None, causal, window)[0]
                want = torch.where(valid.any(-1), valid.to(torch.int8).argmax(-1), -1).expand(2, -1)
                bad = (argmax.cpu() != want).nonzero()
                where = f"Nk={Nk} Nq={Nq} causal={causal} window={window}"
                assert bad.numel() == 0, f"{where}: {len(bad)} rows pick another key, e.g. {bad[0].tolist()}"


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 16, 33, generator=gen, dtype=torch.float64).transpose(1, 2)  # (2, 33, 16) strided
    k = torch.randn(2, 16, 40, generator=gen, dtype=torch.float64).transpose(1, 2)
    v = torch.randn(2, 40, 24, generator=gen, dtype=torch.float64)[:, :, ::2]
    got = torch.ops.attnzoo.bilinear_fwd(q.to(DEV), k.to(DEV), v.to(DEV), None, 0.5, None, None, None, None, 0, False,
                                         -1)
    want = ref.bilinear_fwd(q, k, v, None, 0.5, None, None, None, None, 0, False, -1)
    _close(got[0], want[0], torch.float64, "out")
    _close(got[1], want[1], torch.float64, "lse")


def test_no_keys():
    q = torch.randn(2, 5, 8, device=DEV)
    k = torch.randn(2, 0, 8, device=DEV)
    v = torch.randn(2, 0, 4, device=DEV)
    out, lse, argmax, *_ = torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, 1, False, -1)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isinf(lse).all() and (lse < 0).all()
    assert (argmax == -1).all()


@pytest.mark.parametrize("pooling", ["soft", "average"])
@pytest.mark.parametrize("mask_kind", ["none", "mask_bcast", "all"])
def test_gradcheck_bilinear(mask_kind, pooling):
    gen = torch.Generator().manual_seed(5)
    B, Nq, Nk, D, Dv = 2, 7, 9, 5, 4
    vl, mask, causal, window = _mask_args(B, Nq, Nk, mask_kind, gen)
    if vl is not None:
        vl.clamp_(min=Nk)  # no empty rows: their lse is -inf
    if mask is not None:
        mask = mask.clone()
        mask[..., 0] = True
        if causal or window >= 0:
            mask = mask | torch.eye(Nq, Nk, dtype=torch.bool)
    q, k, v, kb = (
        torch.randn(*s, generator=gen, dtype=torch.float64, device="cpu").to(DEV).requires_grad_()
        for s in ((B, Nq, D), (B, Nk, D), (B, Nk, Dv), (B, Nk))
    )

    def f(q, k, v, kb):
        out, lse, _ = ops.bilinear_attention(
            q,
            k,
            v,
            kb,
            0.7,
            valid_lens=_dev(vl),
            mask=_dev(mask),
            pooling=pooling,
            causal=causal,
            window=None if window < 0 else window,
        )
        return out, lse

    assert torch.autograd.gradcheck(f, (q, k, v, kb), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("pooling", ["soft", "average"])
@pytest.mark.parametrize("family", list(ELEMENTWISE))
def test_gradcheck_elementwise(family, pooling):
    gen = torch.Generator().manual_seed(6)
    B, Nq, Nk, H, Dv = 2, 6, 8, 5, 3
    a, b, w, v = (
        torch.randn(*s, generator=gen, dtype=torch.float64).to(DEV).requires_grad_()
        for s in ((B, Nq, H), (B, Nk, H), (H,), (B, Nk, Dv))
    )

    (term, profile), scale = ELEMENTWISE[family]
    if scale is not None:
        w = (w.detach().abs() * scale).requires_grad_()

    def f(a, b, w, v):
        out, lse, _ = ops.elementwise_attention(a, b, w, v, term=term, profile=profile, pooling=pooling, causal=True)
        return out, lse[lse.isfinite()]

    assert torch.autograd.gradcheck(f, (a, b, w, v), eps=1e-6, atol=1e-6)


def _opcheck_args(family, pooling, requires_grad):
    gen = torch.Generator().manual_seed(7)
    B, Nq, Nk, D, Dv = 2, 6, 9, 8, 4

    def r(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float32).to(DEV).requires_grad_(requires_grad)

    vl = torch.randint(1, Nk + 1, (B, Nq), generator=gen).to(DEV)
    mask = (torch.rand(B, 1, Nk, generator=gen) > 0.2).expand(B, Nq, Nk).to(DEV)
    margs = (vl, mask, None, None, pooling, True, 4)
    if family == "bilinear":
        return (r(B, Nq, D), r(B, Nk, D), r(B, Nk, Dv), r(B, Nk), 0.5, *margs)
    return (r(B, Nq, D), r(B, Nk, D), r(D), r(B, Nk, Dv), *_codes(family), *margs)


@pytest.mark.parametrize("pooling", [0, 1, 2])
@pytest.mark.parametrize("family", ["bilinear", "additive", "epanechnikov"])
def test_opcheck(family, pooling):
    name = "bilinear" if family == "bilinear" else "elementwise"
    fwd = getattr(torch.ops.attnzoo, f"{name}_fwd")
    bwd = getattr(torch.ops.attnzoo, f"{name}_bwd")
    args = _opcheck_args(family, pooling, requires_grad=True)
    torch.library.opcheck(fwd.default, args)
    nograd = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    saved = fwd(*nograd)
    B, Nq = nograd[0].shape[:2]
    Dv = nograd[2].shape[-1] if family == "bilinear" else nograd[3].shape[-1]
    g = torch.randn(B, Nq, Dv, device=DEV)
    gl = torch.randn(B, Nq, device=DEV)
    bargs = (g, gl, *nograd, False, *saved[:4])
    torch.library.opcheck(bwd.default, bargs)


def test_entropy_is_refused_by_the_kernels_and_computed_off_them():
    q, k, v = (torch.randn(2, 300, 16, device=DEV) for _ in range(3))
    with pytest.raises(RuntimeError, match="entropy"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 0.25, None, None, None, None, 0, False, -1, True)
    import attnzoo

    attn = attnzoo.create("scaled_dot")
    out, ent = attn(q, k, v, return_entropy=True)  # on CUDA off the kernels (the reference at this size)
    out_c, ent_c = attn(q.cpu(), k.cpu(), v.cpu(), return_entropy=True)  # the CPU kernels
    torch.testing.assert_close(ent.cpu(), ent_c, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.cpu(), out_c, atol=1e-4, rtol=0)


def test_all_parametrisations_listed():
    # guard against silently dropping a mask kind / pooling from the grid above
    assert len(list(itertools.product(MASKS, POOLINGS, DTYPES))) == 7 * 3 * 4
