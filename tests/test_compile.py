"""torch.compile of zoo modules on the CPU, without graph breaks (fullgraph=True): outputs and the
gradients of every input and parameter equal the eager ones."""

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
    up = torch.randn(2, 5, 4)

    def grads(module):
        attn.zero_grad(set_to_none=True)
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = module(*inputs, valid_lens=lens)
        (out * up).sum().backward()
        return out.detach(), [t.grad for t in inputs] + [p.grad for p in attn.parameters()]

    (out_c, grads_c), (out_e, grads_e) = grads(compiled), grads(attn)
    torch.testing.assert_close(out_c, out_e)
    assert len(grads_c) == len(grads_e) >= 3
    for i, (a, b) in enumerate(zip(grads_c, grads_e, strict=True)):
        assert (a is None) == (b is None), f"gradient {i}"
        if a is not None:
            torch.testing.assert_close(a, b, msg=f"gradient {i} (inputs q, k, v, then parameters)")


def test_inductor_compiles_a_fused_module():
    torch._dynamo.reset()
    attn = attnzoo.create("multihead", embed_dim=8, num_heads=2, backend="fused")
    q, k = torch.randn(2, 5, 8), torch.randn(2, 9, 8)
    compiled = torch.compile(attn, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, k), attn(q, k, k), atol=1e-5, rtol=1e-5)
    grads = []
    for module in (compiled, attn):
        attn.zero_grad(set_to_none=True)
        qg = q.clone().requires_grad_()
        module(qg, k, k).square().sum().backward()
        grads.append([qg.grad] + [p.grad for p in attn.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_validation_holds_inside_the_compiled_graph(backend):
    torch._dynamo.reset()
    compiled = torch.compile(attnzoo.create("soft", backend="fused"), fullgraph=True, backend=backend)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    assert compiled(q, k, v, valid_lens=torch.tensor([2, 3])).shape == (2, 3, 2)
    with pytest.raises(RuntimeError, match="valid_lens: lengths must be >= 0"):
        compiled(q, k, v, valid_lens=torch.tensor([-1, 3]))
