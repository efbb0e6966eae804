"""torch.compile of zoo modules on the CPU, without graph breaks (fullgraph=True)."""

import pytest
import torch

import attnzoo


@pytest.mark.parametrize("name, options", [
    ("scaled_dot", {}),
    ("additive", {"query_dim": 8, "key_dim": 8, "hidden_dim": 6}),
    ("hard", {"score": "cosine"}),
    ("local", {"window": 2}),
])
def test_compiled_module_matches_eager(name, options):
    torch._dynamo.reset()
    attn = attnzoo.create(name, backend="fused", **options)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 9, 8), torch.randn(2, 9, 4)
    lens = torch.tensor([3, 9])
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v, valid_lens=lens), attn(q, k, v, valid_lens=lens))
    qg = q.clone().requires_grad_()
    compiled(qg, k, v, valid_lens=lens).sum().backward()
    assert torch.isfinite(qg.grad).all()


def test_inductor_compiles_a_fused_module():
    torch._dynamo.reset()
    attn = attnzoo.create("multihead", embed_dim=8, num_heads=2, backend="fused")
    q, k = torch.randn(2, 5, 8), torch.randn(2, 9, 8)
    compiled = torch.compile(attn, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, k), attn(q, k, k), atol=1e-5, rtol=1e-5)
