"""Hard attention's straight-through gradient, on each backend on its own.

``w = onehot(argmax s) + p - stop_grad(p)`` with ``p = softmax(s)``: the forward is one-hot, and the
gradient with respect to everything upstream of the scores (query, key, the score's parameters)
is soft attention's on the same scores, through the output and through the returned weights alike;
the value's gradient is the one-hot weights' ``w^T g``.
"""

import pytest
import torch

import attnzoo
from attnzoo import ops

SCORES = {
    "dot": {}, "scaled_dot": {}, "general": {"query_dim": 6, "key_dim": 6}, "cosine": {"temperature": 0.3},
    "concat": {"query_dim": 6, "key_dim": 6}, "additive": {"query_dim": 6, "key_dim": 6, "hidden_dim": 5},
    "nadaraya_watson": {"learnable": True, "w": 0.7},
}
BACKENDS = ["reference"] + (["fused"] if ops.EXTENSION else [])
MASKS = {
    "none": {},
    "lens": {"valid_lens": torch.tensor([5, 0, 11])},
    "bool": {"mask": torch.rand(3, 7, 11, generator=torch.Generator().manual_seed(2)) > 0.4},
}


def _grads(pooling, score, backend, mask_kw, structure):
    torch.manual_seed(0)
    attn = attnzoo.create(pooling, score=score, backend=backend, **structure, **SCORES[score]).double()
    g = torch.Generator().manual_seed(1)
    q = (0.5 + torch.randn(3, 7, 6, generator=g, dtype=torch.float64)).requires_grad_()
    k = (torch.randn(3, 11, 6, generator=g, dtype=torch.float64) - 0.3).requires_grad_()
    v = (10 + torch.randn(3, 11, 4, generator=g, dtype=torch.float64)).requires_grad_()
    out, w = attn(q, k, v, return_weights=True, **mask_kw)
    up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    ((out * up).sum() + (w * torch.randn(w.shape, generator=g, dtype=torch.float64)).sum()).backward()
    params = {n: p.grad for n, p in attn.named_parameters()}
    return {"query": q.grad, "key": k.grad, **params}, v.grad, w.detach(), up


@pytest.mark.parametrize("structure", [{}, {"causal": True}, {"window": 2}], ids=["full", "causal", "window"])
@pytest.mark.parametrize("mask", sorted(MASKS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("score", sorted(SCORES))
def test_hard_gradient_is_soft_gradient(score, backend, mask, structure):
    hard, dv_hard, w_hard, up = _grads("hard", score, backend, MASKS[mask], structure)
    soft, _, _, _ = _grads("soft", score, backend, MASKS[mask], structure)
    assert hard.keys() == soft.keys()
    for name in soft:
        a, b = hard[name], soft[name]
        if b is None or a is None:  # concat's query term cancels: no gradient on either side
            assert a is None or (a == 0).all(), name
            assert b is None or b.abs().max() < 1e-12, name
            continue
        assert b.abs().max() > 0 or name == "query", f"{name}: soft gradient is zero, the test would prove nothing"
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=f"{score} {backend}: grad of {name}")
    assert ((w_hard == 0) | (w_hard == 1)).all()
    torch.testing.assert_close(dv_hard, w_hard.transpose(-1, -2) @ up, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hard_multihead_gradient_is_soft_gradient(backend):
    grads = {}
    for pooling in ("hard", "soft"):
        torch.manual_seed(0)
        attn = attnzoo.create("multihead", embed_dim=8, num_heads=2, pooling=pooling, backend=backend).double()
        g = torch.Generator().manual_seed(1)
        q, k = (torch.randn(2, n, 8, generator=g, dtype=torch.float64, requires_grad=True) for n in (5, 9))
        out = attn(q, k, k.detach(), valid_lens=torch.tensor([9, 3]))
        (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum().backward()
        grads[pooling] = {"query": q.grad, "key": k.grad,
                          **{n: p.grad for n, p in attn.named_parameters() if n.startswith(("W_q", "W_k"))}}
    for name, b in grads["soft"].items():
        torch.testing.assert_close(grads["hard"][name], b, atol=1e-10, rtol=1e-9, msg=name)
