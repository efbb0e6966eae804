"""The fused backend against the reference, module by module, and backend selection."""

import pytest
import torch

import attnzoo
from attnzoo import ops

SCORES = {
    "dot": {}, "scaled_dot": {}, "general": {"query_dim": 6, "key_dim": 6}, "cosine": {"temperature": 0.5},
    "concat": {"query_dim": 6, "key_dim": 6}, "additive": {"query_dim": 6, "key_dim": 6, "hidden_dim": 5},
    "nadaraya_watson": {"learnable": True, "w": 0.7},
}
MASKS = {
    "none": lambda: {},
    "lens": lambda: {"valid_lens": torch.tensor([5, 0, 17])},
    "lens_per_query": lambda: {"valid_lens": torch.arange(3 * 9).view(3, 9) % 6},
    "bool": lambda: {"mask": torch.rand(3, 1, 17, generator=torch.Generator().manual_seed(0)) > 0.3},
    "causal": lambda: {"causal": True},
    "window": lambda: {"window": 2},
    "window_lens_bool": lambda: {"window": 3, "valid_lens": torch.tensor([4, 9, 17]),
                                 "mask": torch.rand(3, 9, 17, generator=torch.Generator().manual_seed(1)) > 0.2},
}


def _run(pooling, score, options, backend, mask_kw, dtype):
    structure = {k: mask_kw.pop(k) for k in ("causal", "window") if k in mask_kw}
    torch.manual_seed(0)
    if pooling == "average":
        attn = attnzoo.create("average", backend=backend, **structure).to(dtype)
    else:
        attn = attnzoo.create(pooling, score=score, backend=backend, **structure, **options).to(dtype)
    g = torch.Generator().manual_seed(1)
    sizes = ((9, 6), (17, 6), (17, 4))
    q, k, v = (torch.randn(3, n, d, generator=g, dtype=dtype, requires_grad=True) for n, d in sizes)
    out, w = attn(q, k, v, return_weights=True, **mask_kw)
    (out.square().sum() + (w * torch.arange(17, dtype=dtype)).sum()).backward()
    grads = [t.grad for t in (q, k, v)] + [p.grad for p in attn.parameters()]
    return out, w, grads


COMBOS = [(s, p) for s in sorted(SCORES) for p in ("soft", "hard")] + [("dot", "average")]  # average: no score


@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("score, pooling", COMBOS)
def test_fused_matches_reference_float64(score, pooling, mask):
    ref = _run(pooling, score, SCORES[score], "reference", MASKS[mask](), torch.float64)
    fused = _run(pooling, score, SCORES[score], "fused", MASKS[mask](), torch.float64)
    for what, a, b in (("out", fused[0], ref[0]), ("weights", fused[1], ref[1])):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=what)
    for i, (a, b) in enumerate(zip(fused[2], ref[2], strict=True)):
        if a is None or b is None:  # e.g. concat's query term: it cancels, so its gradient is 0 (or rounding)
            other = a if a is not None else b
            assert other is None or other.abs().max() < 1e-12, f"grad {i}"
            continue
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8, msg=f"grad {i}")


@pytest.mark.parametrize("score", ["scaled_dot", "additive"])
def test_fused_matches_reference_float32(score):
    ref = _run("soft", score, SCORES[score], "reference", {"valid_lens": torch.tensor([5, 1, 17])}, torch.float32)
    fused = _run("soft", score, SCORES[score], "fused", {"valid_lens": torch.tensor([5, 1, 17])}, torch.float32)
    torch.testing.assert_close(fused[0], ref[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(fused[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_explain_says_why():
    q = torch.randn(2, 3, 4)
    assert "requested with backend='reference'" in attnzoo.create("soft", backend="reference").explain(q, q, q)
    auto = attnzoo.create("soft").explain(q, q, q)
    if ops.EXTENSION:
        assert auto.startswith("fused: bilinear family, cpu / torch.float32, on compiled kernels")
    else:
        assert auto.startswith("reference: fused ops not compiled")
    assert attnzoo.create("additive", query_dim=4, key_dim=4, hidden_dim=3).explain(q, q, q).startswith(
        "fused: elementwise (tanh, identity) family" if ops.EXTENSION else "reference")
    assert attnzoo.create("nadaraya_watson", kernel="boxcar").explain(q, q, q).startswith(
        "fused: elementwise (sq_diff, boxcar) family" if ops.EXTENSION else "reference")
    assert attnzoo.explain(attnzoo.create("soft"), q, q, q) == auto


def test_fused_ops_exist_without_the_extension():
    for name in ("bilinear_fwd", "bilinear_bwd", "elementwise_fwd", "elementwise_bwd"):
        assert hasattr(torch.ops.attnzoo, name)


def test_concat_weights_ignore_the_query():
    attn = attnzoo.create("concat", query_dim=4, key_dim=4)
    _, w = attn(torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2), return_weights=True)
    torch.testing.assert_close(w[0, 0].expand_as(w[0]), w[0])
