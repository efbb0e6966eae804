"""Regressions of defects found by fuzzing the public API: each test failed before its fix."""

import warnings

import pytest
import torch

import attnzoo
from attnzoo import ops
from attnzoo.errors import PluginLoadWarning

BACKENDS = ["reference"] + (["fused"] if ops.EXTENSION else [])


def _qkv(b=2, nq=3, nk=5, d=4, dv=2, dtype=torch.float32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = ((nq, d), (nk, d), (nk, dv))
    return [torch.randn(b, n, c, generator=g, dtype=dtype).requires_grad_(grad) for n, c in sizes]


# 1. NaN propagates to the rows it touches; weights are never above 1 -------------------------------------------------
@pytest.mark.parametrize("pooling", ["soft", "hard"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_key_propagates(backend, pooling):
    q, k, v = _qkv()
    k[0, 2, 0] = float("nan")
    out, w = attnzoo.create(pooling, backend=backend)(q, k, v, return_weights=True)
    assert torch.isnan(out[0]).all(), "every query of batch 0 meets the NaN key"
    assert torch.isfinite(out[1]).all() and torch.isfinite(w[1]).all()
    assert not (w > 1 + 1e-6).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_query_propagates_to_its_row_only(backend):
    q, k, v = _qkv()
    q[1, 1, 3] = float("nan")
    out = attnzoo.create("soft", backend=backend)(q, k, v)
    assert torch.isnan(out[1, 1]).all()
    assert torch.isfinite(out[1, [0, 2]]).all() and torch.isfinite(out[0]).all()


# 2. double backward: an error, never a wrong number -------------------------------------------------------------------
@pytest.mark.skipif(not ops.EXTENSION, reason="the eager ops are differentiable twice")
@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_double_backward_through_fused_raises(score):
    opts = {"query_dim": 4, "key_dim": 4, "hidden_dim": 3} if score == "additive" else {}
    attn = attnzoo.create(score, backend="fused", **opts).double()
    q, k, v = _qkv(dtype=torch.float64, grad=True)
    (g,) = torch.autograd.grad(attn(q, k, v).square().sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives through the fused kernels"):
        g.sum().backward()


def test_double_backward_on_reference_is_exact():
    attn = attnzoo.create("soft", backend="reference").double()
    q, k, v = _qkv(b=1, nq=2, nk=3, dtype=torch.float64, grad=True)
    assert torch.autograd.gradgradcheck(lambda q_: attn(q_, k, v), (q,))


# 3. returned weights are distributions that reproduce the output ------------------------------------------------------
@pytest.mark.parametrize("nk", [1, 7])
@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_of_large_scores_sum_to_one(backend, nk):
    g = torch.Generator().manual_seed(3)
    q, k = 100 + torch.randn(2, 4, 16, generator=g), 100 + torch.randn(2, nk, 16, generator=g)
    v = torch.randn(2, nk, 3, generator=g)
    out, w = attnzoo.create("dot", backend=backend)(q, k, v, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4), atol=2e-6, rtol=0)
    assert not (w > 1).any()
    torch.testing.assert_close(out, w @ v, atol=1e-5, rtol=1e-5)


# 5. what a plugin returns is checked, and the error names the score ---------------------------------------------------
class _BadScores(torch.nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, q, k):
        s = q @ k.transpose(-1, -2)
        return {"broadcast": s[:1], "dtype": s.double(), "ok": s}[self.kind]

    def fused(self, q, k):
        if self.kind == "form_nq":
            return attnzoo.scoring.Bilinear(q[..., :-1, :], k)
        if self.kind == "form_width":
            return attnzoo.scoring.Bilinear(q, k[..., :-1])
        return None


@pytest.mark.parametrize("kind, error, match", [
    ("broadcast", ValueError, r"score _BadScores returned shape \(1, 3, 5\), needs batch \+ \(Nq, Nk\) = \(2, 3, 5\)"),
    ("dtype", TypeError, "score _BadScores returned dtype torch.float64 for torch.float32 inputs"),
    ("form_nq", ValueError, r"score _BadScores: fused\(\) form Bilinear.q: shape \(2, 2, 4\), needs \(2, 3, 'F'\)"),
    ("form_width", ValueError, "score _BadScores: fused.. form Bilinear.k: feature size 3, the form's other tensors"),
])
def test_plugin_outputs_are_checked(kind, error, match):
    from attnzoo.variants import PooledAttention

    backend = "fused" if kind.startswith("form") else "reference"
    if backend == "fused" and not ops.EXTENSION:
        pytest.skip("needs the extension for backend='fused'")
    with pytest.raises(error, match=match):
        PooledAttention(_BadScores(kind), "soft", backend=backend)(*_qkv())


# 7. NaN in padded keys does not poison the gradients ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["valid_lens", "mask", "both"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, opts", [("scaled_dot", {}), ("general", {"query_dim": 4, "key_dim": 4}),
                                        ("additive", {"query_dim": 4, "key_dim": 4, "hidden_dim": 3}),
                                        ("multihead", {"embed_dim": 4, "num_heads": 2, "vdim": 2})])
def test_nan_in_padded_keys_keeps_gradients_finite(name, opts, backend, how):
    attn = attnzoo.create(name, backend=backend, **opts)
    q, k, v = _qkv(grad=True)
    k.data[:, 3:] = float("nan")
    v.data[:, 3:] = float("nan")
    kw = {}
    if how in ("valid_lens", "both"):
        kw["valid_lens"] = torch.tensor([3, 2])
    if how in ("mask", "both"):
        kw["mask"] = (torch.arange(5) < 3).view(1, 1, 5)
    out = attn(q, k, v, **kw)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for n, t in (("query", q), *attn.named_parameters()):
        assert t.grad is None or torch.isfinite(t.grad).all(), n


# 8. empty inputs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nq, nk", [(0, 5), (3, 0), (0, 0)])
def test_empty_inputs_have_zero_gradients(backend, nq, nk):
    q, k, v = _qkv(nq=nq, nk=nk, grad=True)
    for name in ("soft", "hard", "average"):
        out, w = attnzoo.create(name, backend=backend)(q, k, v, return_weights=True)
        assert out.shape == (2, nq, 2) and w.shape == (2, nq, nk)
        (out.sum() + w.sum()).backward()
        for t in (q, k, v):
            assert t.grad is not None and (t.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_with_weights(backend):
    out, w = attnzoo.create("soft", backend=backend)(*_qkv(b=0), return_weights=True)
    assert out.shape == (0, 3, 2) and w.shape == (0, 3, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_queries_with_per_query_lengths(backend):
    out = attnzoo.create("soft", backend=backend)(*_qkv(nq=0), valid_lens=torch.zeros(2, 0, dtype=torch.long))
    assert out.shape == (2, 0, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_features_is_an_error(backend):
    q, k, v = _qkv(d=0)
    with pytest.raises(ValueError, match=r"query: needs at least one feature \(last dim >= 1\)"):
        attnzoo.create("soft", backend=backend)(q, k, v)


# 9. clear errors naming the argument ----------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["query_dim", "key_dim", "hidden_dim"])
@pytest.mark.parametrize("value", [-1, 0, 2.5, True])
def test_size_options_must_be_positive_ints(option, value):
    opts = {"query_dim": 4, "key_dim": 4, "hidden_dim": 3, option: value}
    with pytest.raises(ValueError, match=f"{option}: expected a positive int"):
        attnzoo.create("additive", **opts)
    if option != "hidden_dim":
        with pytest.raises(ValueError, match=f"{option}: expected a positive int"):
            attnzoo.create("general", **{k: v for k, v in opts.items() if k != "hidden_dim"})


def test_float8_inputs_are_refused():
    q, k, v = (t.to(torch.float8_e4m3fn) for t in _qkv())
    with pytest.raises(TypeError, match="query: expected dtype float16, bfloat16, float32 or float64"):
        attnzoo.create("soft")(q, k, v)


@pytest.mark.parametrize("dtype", [torch.uint64, torch.uint32])
def test_wide_unsigned_lengths_are_refused(dtype):
    with pytest.raises(TypeError, match=f"valid_lens: expected an integer tensor .* got dtype {dtype}"):
        attnzoo.create("soft")(*_qkv(), valid_lens=torch.tensor([2**32 - 1, 1], dtype=dtype))


def test_sparse_mask_is_refused():
    mask = torch.ones(2, 3, 5, dtype=torch.bool).to_sparse()
    with pytest.raises(TypeError, match="mask: expected a dense .strided. tensor, got layout torch.sparse_coo"):
        attnzoo.create("soft")(*_qkv(), mask)


# 11. an installed plugin re-registering a built-in name is skipped, not fatal -----------------------------------------
DUP = {"tp_dup": """
import attnzoo
from torch import nn

class Mine(nn.Module):
    def forward(self, q, k):
        return -(q @ k.transpose(-1, -2))

@attnzoo.hookimpl
def attnzoo_register_scores(register):
    register("dot", Mine)
    register("neg_dot2", Mine)
"""}


def test_installed_duplicate_is_skipped_with_a_warning(installed):
    installed("tp-dup", {"tp_dup": "tp_dup"}, DUP)
    with pytest.warns(PluginLoadWarning, match="'dot' is registered by two plugins: 'scores' and 'tp_dup'"):
        names = attnzoo.list_variants()
    assert "neg_dot2" in names and attnzoo.variant_info("dot").plugin == "scores"
    attnzoo.create("soft")
    assert [f.plugin for f in attnzoo.plugin_failures()] == ["tp_dup"]


def test_installed_duplicate_raises_in_strict_mode(installed, monkeypatch):
    monkeypatch.setenv("ATTNZOO_STRICT_PLUGINS", "1")
    installed("tp-dup", {"tp_dup": "tp_dup"}, DUP)
    with pytest.raises(attnzoo.DuplicateNameError):
        attnzoo.list_variants()


def test_run_time_duplicate_still_raises(fresh_registry):
    class Again:
        @attnzoo.hookimpl
        def attnzoo_register_scores(self, register):
            register("cosine", torch.nn.Identity)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(attnzoo.DuplicateNameError, match="'cosine' is registered by two plugins"):
            attnzoo.register(Again(), name="again")
    assert "cosine" in attnzoo.list_variants()


# 12. concat's query gradient is zero on both backends, not None on one ------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_concat_query_gradient_is_zero(backend):
    q, k, v = _qkv(grad=True)
    attnzoo.create("concat", query_dim=4, key_dim=4, backend=backend)(q, k, v).sum().backward()
    assert q.grad is not None
    torch.testing.assert_close(q.grad, torch.zeros_like(q), atol=1e-6, rtol=0)


# 6. values at keys a query cannot attend never reach it --------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pooling", ["soft", "hard", "average"])
@pytest.mark.parametrize("kind", ["causal", "window", "per_query_lens"])
def test_unseen_inf_values_do_not_leak(backend, pooling, kind):
    q, k, v = _qkv(nq=5, nk=5, grad=True)
    v.data[:, 4] = float("inf")
    v.data[1, 3, 0] = float("nan")
    kw, opts = {}, {}
    if kind == "per_query_lens":
        kw["valid_lens"] = torch.tensor([[3, 3, 5, 5, 5], [2, 3, 3, 5, 5]])
    else:
        opts = {"causal": True} if kind == "causal" else {"window": 1}
    out = attnzoo.create(pooling, backend=backend, **opts)(q, k, v, **kw)
    rows = [0, 1]  # none of them can attend keys 3 and 4 in any of the kinds
    assert torch.isfinite(out[:, rows]).all()
    assert not torch.isfinite(out[:, 4]).all() or pooling == "hard"  # query 4 attends key 4
    out[:, rows].sum().backward()
    assert q.grad is None or torch.isfinite(q.grad[:, rows]).all()  # (average: no score, no gradient)
