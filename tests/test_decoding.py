"""Decoding: bottom-right alignment, grouped keys (GQA / MQA) and the KV cache.

Each is checked against a formulation that does not use it: an explicit bool mask / shifted ALiBi, keys
repeated per head, the whole causal sequence at once.
"""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo import ops
from attnzoo.ops import reference

needs_ext = pytest.mark.skipif(not ops.EXTENSION, reason="fused ops not compiled")


def _explicit(nq, nk, causal, window, off):
    i = torch.arange(nq).view(-1, 1) + off
    j = torch.arange(nk).view(1, -1)
    m = torch.ones(nq, nk, dtype=torch.bool)
    if causal:
        m &= j <= i
    if window is not None:
        m &= (i - j).abs() <= window
    return m


def _uncentred(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (1000 + torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("nq,nk", [(3, 9), (9, 3), (5, 5), (1, 7)])
@pytest.mark.parametrize("causal,window", [(True, None), (False, 2), (True, 1)])
@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
@pytest.mark.parametrize("backend", ["auto", "blockwise"])
def test_bottom_right_equals_an_explicit_mask(score, backend, nq, nk, causal, window):
    opts = dict(query_dim=6, key_dim=6, hidden_dim=8) if score == "additive" else {}
    torch.manual_seed(0)
    aligned = attnzoo.create("soft", score=score, causal=causal, window=window, align="bottom_right",
                             backend=backend, **opts).double()
    plain = attnzoo.create("soft", score=score, backend="reference", **opts).double()
    plain.load_state_dict(aligned.state_dict())
    q, k, v = (torch.randn(2, n, d, dtype=torch.float64, requires_grad=True) for n, d in ((nq, 6), (nk, 6), (nk, 3)))
    got = aligned(q, k, v)
    want = plain(q, k, v, _explicit(nq, nk, causal, window, nk - nq))
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("window", [0, 2])
def test_bottom_right_local_window_and_alibi(window):
    q, k, v = (torch.randn(2, n, 4, dtype=torch.float64) for n in (3, 8, 8))
    aligned = attnzoo.create("local", window=window, align="bottom_right", position="alibi", alibi_slope=0.5)
    plain = attnzoo.create("scaled_dot", backend="reference")
    off = 5
    i = torch.arange(3).view(-1, 1) + off
    j = torch.arange(8).view(1, -1)
    want = plain(q, k, v, _explicit(3, 8, False, window, off), bias=-0.5 * (i - j).abs().double())
    torch.testing.assert_close(aligned(q, k, v), want)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pooling", ["soft", "hard", "average"])
@pytest.mark.parametrize("family", ["bilinear", "additive"])
def test_q_offset_kernels_match_the_oracle(family, pooling, dtype):
    B, nq, nk, D = 3, 5, 11, 4
    q, k = _uncentred(B, nq, D, dtype=dtype, seed=1) / 500, _uncentred(B, nk, D, dtype=dtype, seed=2) / 500
    v = _uncentred(B, nk, 3, dtype=dtype, seed=3)
    alibi = torch.tensor([0.1, 0.5, 1.0], dtype=dtype)
    for off, causal, window in ((6, True, None), (-2, True, 2), (3, False, 1), (0, True, 3)):
        kw = dict(pooling=pooling, causal=causal, window=window, alibi=alibi, q_offset=off)
        if family == "bilinear":
            got = ops.bilinear_attention(q, k, v, None, 0.5, **kw)
            codes = (None, 0.5)
            fwd = reference.bilinear_fwd
            args = (q, k, v, *codes)
        else:
            w = torch.randn(D, dtype=dtype)
            got = ops.additive_attention(q, k, w, v, **kw)
            fwd = reference.elementwise_fwd
            args = (q, k, w, v, 0, 0)
        want = fwd(*args, None, None, None, alibi, ops.POOLINGS[pooling], causal, -1 if window is None else window,
                   q_offset=off)
        tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-3)
        torch.testing.assert_close(got[0], want[0], **tol)
        if pooling == "hard":
            assert torch.equal(got[2], want[2])


def _grouped_inputs(dtype, family, G=2, g=3, nq=5, nk=7, D=4):
    B = G * g
    q = _uncentred(B, nq, D, dtype=dtype, seed=4) / 700
    k = _uncentred(G, nk, D, dtype=dtype, seed=5) / 700
    v = _uncentred(G, nk, 3, dtype=dtype, seed=6)
    return q, k, v, g


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pooling", ["soft", "hard", "average"])
@pytest.mark.parametrize("family", ["bilinear", "additive"])
def test_grouped_keys_equal_repeated_keys(family, pooling, dtype):
    """Outputs and every gradient (the key gradients summed over the group) against the keys repeated."""
    q, k, v, g = _grouped_inputs(dtype, family)
    kb = torch.randn(k.shape[0], k.shape[1], dtype=dtype)
    w = torch.randn(q.shape[-1], dtype=dtype)
    lens = torch.tensor([[7], [3], [0], [5], [7], [1]]).expand(6, q.shape[1]).contiguous()
    kw = dict(pooling=pooling, causal=True, valid_lens=lens, q_offset=2)

    def run(k_, v_, kb_):
        if family == "bilinear":
            return ops.bilinear_attention(q, k_, v_, kb_, 0.7, **kw)[0]
        return ops.additive_attention(q, k_, w, v_, **kw)[0]

    leaves = [t.requires_grad_() for t in (q, k, v, kb, w)]
    out = run(k, v, kb)
    rep = run(k.repeat_interleave(g, 0), v.repeat_interleave(g, 0), kb.repeat_interleave(g, 0))
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out, rep, **tol)
    gout = torch.randn_like(out)
    used = [t for t in leaves if (family == "bilinear") != (t is w)]
    ga = torch.autograd.grad(out, used, gout, allow_unused=True)
    gb = torch.autograd.grad(rep, used, gout, allow_unused=True)
    for a, b in zip(ga, gb, strict=True):
        if a is None or b is None:
            assert a is None and b is None or pooling == "average"
            continue
        scale = max(1.0, float(b.abs().max()))
        torch.testing.assert_close(a / scale, b / scale, **tol)


@needs_ext
@pytest.mark.parametrize("family", ["bilinear", "additive"])
def test_grouped_keys_gradcheck_and_opcheck(family):
    q, k, v, g = _grouped_inputs(torch.float64, family, G=2, g=2, nq=3, nk=4, D=3)
    q, k, v = (t / 1000 * 0 + torch.randn_like(t) for t in (q, k, v))
    w = torch.randn(3, dtype=torch.float64)
    kw = dict(pooling="soft", causal=True, q_offset=1)
    if family == "bilinear":
        fn = lambda q, k, v: ops.bilinear_attention(q, k, v, None, 0.5, **kw)[0]  # noqa: E731
        op, args = torch.ops.attnzoo.bilinear_fwd.default, (q, k, v, None, 0.5)
    else:
        fn = lambda q, k, v: ops.additive_attention(q, k, w, v, **kw)[0]  # noqa: E731
        op, args = torch.ops.attnzoo.elementwise_fwd.default, (q, k, w, v, 0, 0)
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(fn, inputs)
    full = (*args, None, None, None, None, 0, True, -1, False, None, 1.0, 1)
    torch.library.opcheck(op, tuple(t.clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point()
                                    else t for t in full))


@needs_ext
def test_grouped_keys_errors_name_the_argument():
    q, k, v = torch.randn(6, 2, 4), torch.randn(4, 3, 4), torch.randn(4, 3, 2)
    with pytest.raises(RuntimeError, match="k's batch Bk must equal or divide q's B = 6"):
        ops.bilinear_attention(q, k, v)


def _mha(num_kv_heads, **kw):
    torch.manual_seed(0)
    return attnzoo.create("multihead", embed_dim=16, num_heads=4, num_kv_heads=num_kv_heads, **kw).double()


@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_multihead_gqa_equals_repeated_heads(G, backend):
    """num_kv_heads=G against num_kv_heads=H whose key and value projections repeat each of the G heads."""
    gqa = _mha(G, causal=True, backend=backend)
    full = _mha(None, causal=True, backend=backend)
    d, g = 4, 4 // G
    with torch.no_grad():
        full.W_q.load_state_dict(gqa.W_q.state_dict())
        full.W_o.load_state_dict(gqa.W_o.state_dict())
        for dst, src in ((full.W_k, gqa.W_k), (full.W_v, gqa.W_v)):
            dst.weight.copy_(src.weight.view(G, d, 16).repeat_interleave(g, 0).reshape(16, 16))
            dst.bias.copy_(src.bias.view(G, d).repeat_interleave(g, 0).reshape(16))
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    lens = torch.tensor([6, 4])
    out, w = gqa(x, valid_lens=lens, return_weights=True)
    out_f, w_f = full(x, valid_lens=lens, return_weights=True)
    torch.testing.assert_close(out, out_f)
    torch.testing.assert_close(w, w_f)
    assert gqa.W_k.weight.shape == (G * d, 16)


def test_num_kv_heads_must_divide():
    with pytest.raises(ValueError, match="num_kv_heads: expected a positive int dividing num_heads = 4, got 3"):
        attnzoo.create("multihead", embed_dim=16, num_heads=4, num_kv_heads=3)


def _decode(attn, x, steps, lens=None):
    cache = attnzoo.KVCache()
    outs, t = [], 0
    for n in steps:
        outs.append(attn(x[:, t:t + n], cache=cache, valid_lens=None if lens is None or t else lens))
        t += n
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("steps", [[1] * 7, [4, 1, 1, 1], [7]])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, num_kv_heads=2),
                                dict(causal=True, position="alibi"), dict(score="additive", causal=True, hidden_dim=8)])
def test_kv_cache_decoding_equals_the_full_causal_sequence(steps, kw):
    attn = _mha(kw.pop("num_kv_heads", None), **kw)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    got, cache = _decode(attn, x, steps)
    torch.testing.assert_close(got, attn(x))
    assert len(cache) == 7 and cache.capacity >= 7


def test_kv_cache_ragged_prompts():
    """Prompts of different lengths (valid_lens at the prefill), then one token per step for everyone: each entry
    equals its own unpadded causal sequence."""
    attn = _mha(2, causal=True)
    lens = torch.tensor([4, 2, 3])
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    steps = torch.randn(3, 3, 16, dtype=torch.float64)
    cache = attnzoo.KVCache()
    attn(x, cache=cache, valid_lens=lens)
    outs = [attn(steps[:, t:t + 1], cache=cache) for t in range(3)]
    assert cache.lengths.tolist() == [7, 5, 6] and cache.length is None
    for b in range(3):
        seq = torch.cat([x[b:b + 1, :lens[b]], steps[b:b + 1]], 1)
        want = attn(seq)[:, -3:]
        torch.testing.assert_close(torch.cat([o[b:b + 1] for o in outs], 1), want)


def test_kv_cache_ragged_with_window():
    attn = attnzoo.create("multihead", embed_dim=8, num_heads=2, causal=True, window=2).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    cache = attnzoo.KVCache()
    attn(x, cache=cache, valid_lens=torch.tensor([3, 1]))
    nxt = torch.randn(2, 1, 8, dtype=torch.float64)
    got = attn(nxt, cache=cache)
    for b, n in enumerate((3, 1)):
        torch.testing.assert_close(got[b:b + 1], attn(torch.cat([x[b:b + 1, :n], nxt[b:b + 1]], 1))[:, -1:])


def test_kv_cache_errors():
    attn = _mha(None, causal=True)
    cache = attnzoo.KVCache()
    x = torch.randn(2, 1, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="cache: a cached call takes valid_lens="):
        attn(x, cache=cache, mask=torch.ones(1, 1, dtype=torch.bool))
    attn(x, cache=cache)
    with pytest.raises(ValueError, match="reset\\(\\) it for a new batch"):
        attn(torch.randn(3, 1, 16, dtype=torch.float64), cache=cache)
    with pytest.raises(ValueError, match="another module"):
        _mha(None)(x, cache=cache)
    with pytest.raises(TypeError, match="cache: expected an attnzoo.KVCache"):
        attn(x, cache={})


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_prepared_keys_give_the_same_outputs_and_gradients(backend):
    torch.manual_seed(0)
    attn = attnzoo.create("additive", query_dim=5, key_dim=6, hidden_dim=16, backend=backend).double()
    q, k, v = torch.randn(4, 1, 5, dtype=torch.float64), torch.randn(4, 9, 6, dtype=torch.float64), \
        torch.randn(4, 9, 3, dtype=torch.float64)
    lens = torch.tensor([9, 7, 3, 0])
    bad = k.clone()
    bad[1, 7:] = float("nan")  # padding holding garbage: its prepared terms are zeroed as the raw keys are
    with torch.no_grad():
        torch.testing.assert_close(attn(q, attn.prepare_keys(bad), v, valid_lens=lens), attn(q, k, v, valid_lens=lens))
    keys = attn.prepare_keys(k)  # (with gradients: the padding must be finite, W_k's gradient reads it)
    assert set(keys.terms) == {"W_k k"}
    got = attn(q, keys, v, valid_lens=lens)
    want = attn(q, k, v, valid_lens=lens)
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got.sum(), list(attn.parameters()))
    g2 = torch.autograd.grad(want.sum(), list(attn.parameters()))
    for a, b in zip(g1, g2, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)


def test_prepared_keys_refuse_stale_terms_and_other_modules():
    attn = attnzoo.create("additive", query_dim=4, key_dim=4, hidden_dim=8)
    k = torch.randn(2, 5, 4)
    with torch.no_grad():
        keys = attn.prepare_keys(k)
    q = torch.randn(2, 1, 4)
    attn(q, keys, k)
    with pytest.raises(ValueError, match="another module"):
        attnzoo.create("additive", query_dim=4, key_dim=4, hidden_dim=8)(q, keys, k)
    with torch.no_grad():
        attn.score.W_k.weight.add_(1.0)  # an optimizer step
    with pytest.raises(ValueError, match="changed in place since prepare_keys"):
        attn(q, keys, k)


def test_prepare_keys_without_key_terms_keeps_the_keys():
    attn = attnzoo.create("scaled_dot")
    k = torch.randn(2, 5, 4)
    keys = attn.prepare_keys(k)
    assert keys.terms == {}
    q = torch.randn(2, 3, 4)
    torch.testing.assert_close(attn(q, keys, k), attn(q, k, k))


@pytest.mark.parametrize("off", [4, -3])
def test_without_offset_is_the_same_spec(off):
    """What kernels without a query offset (CUDA) are given: the same valid pairs and positional scores."""
    from attnzoo.masks import MaskSpec

    spec = MaskSpec((2, 3), 5, 9, valid_lens=torch.tensor([[[4]], [[9]]]).expand(2, 1, 1), causal=True, window=3,
                    alibi=torch.tensor([0.1, 0.2, 0.4], dtype=torch.float64), q_offset=off,
                    bias=torch.randn(3, 5, 9, dtype=torch.float64))
    flat = spec.without_offset()
    assert flat.q_offset == 0 and not flat.causal and flat.window is None and flat.alibi is None
    assert torch.equal(flat.dense(), spec.dense())
    s = torch.randn(2, 3, 5, 9, dtype=torch.float64)
    torch.testing.assert_close(flat.add_positions(s), spec.add_positions(s))


@pytest.mark.parametrize("nq,nk", [(3, 9), (9, 3), (5, 5), (1, 1), (4, 0)])
@pytest.mark.parametrize("off", [0, -2, 4, None])
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, 1), (True, 0), (False, 6)])
def test_may_have_empty_rows_is_exact_when_false(nq, nk, off, causal, window):
    from attnzoo.masks import MaskSpec

    spec = MaskSpec((2,), nq, nk, causal=causal, window=window, q_offset=nk - nq if off is None else off)
    empty = bool((~spec.dense().any(-1)).any())
    assert spec.may_have_empty_rows() or not empty


@pytest.mark.parametrize("causal", [False, True])
def test_kv_cache_ragged_prefill_keeps_each_entry_to_its_own_tokens(causal):
    """A ragged first step (equal lengths before it): without causality too, no entry attends another's padding."""
    attn = attnzoo.create("multihead", embed_dim=8, num_heads=2, causal=causal).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    lens = torch.tensor([4, 2])
    cache = attnzoo.KVCache()
    got = attn(x, cache=cache, valid_lens=lens)
    nxt = torch.randn(2, 1, 8, dtype=torch.float64)
    step = attn(nxt, cache=cache)
    for b, n in enumerate(lens.tolist()):
        seq = torch.cat([x[b:b + 1, :n], nxt[b:b + 1]], 1)
        full = attn(seq) if causal else None
        if causal:
            torch.testing.assert_close(got[b:b + 1, :n], full[:, :n])
            torch.testing.assert_close(step[b:b + 1], full[:, -1:])
        else:  # every cached token is visible: the prefill's queries see the prompt, the step sees all
            torch.testing.assert_close(got[b:b + 1, :n], attn(x[b:b + 1, :n]))
            torch.testing.assert_close(step[b:b + 1], attn(nxt[b:b + 1], seq, seq))


@needs_ext
def test_forward_mode_ad_is_refused_not_silently_zero():
    """The ops have no jvp: forward-mode AD must fail (torch would give zero tangents), the reference supports it."""
    import torch.autograd.forward_ad as fwAD

    q, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    fused = attnzoo.create("scaled_dot", backend="fused")
    with pytest.raises(NotImplementedError, match="forward-mode AD .* not implemented"):
        torch.func.jvp(lambda x: fused(x), (q,), (t,))
    with pytest.raises(NotImplementedError, match="forward-mode AD"), fwAD.dual_level():
        ops.bilinear_attention(fwAD.make_dual(q, t), q, q)
    _, tangent = torch.func.jvp(lambda x: attnzoo.create("scaled_dot", backend="reference")(x), (q,), (t,))
    assert float(tangent.abs().sum()) > 0
