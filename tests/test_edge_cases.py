"""Edge cases of the masking policy, on both backends."""

import pytest
import torch

import attnzoo

BACKENDS = ["reference", "fused"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nq, nk", [(3, 0), (0, 4)])
def test_no_keys_or_no_queries_give_zeros(backend, nq, nk):
    for attn in (attnzoo.create("soft", backend=backend), attnzoo.create("hard", backend=backend),
                 attnzoo.create("multihead", embed_dim=4, num_heads=2, backend=backend)):
        out, w = attn(torch.randn(2, nq, 4), torch.randn(2, nk, 4), torch.randn(2, nk, 4), return_weights=True)
        assert out.shape == (2, nq, 4) and (out == 0).all() and w.shape[-2:] == (nq, nk)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multihead_takes_a_1d_key_mask(backend):
    mh = attnzoo.create("multihead", embed_dim=8, num_heads=2, backend=backend)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([True, True, False, True])
    torch.testing.assert_close(mh(q, k, k, mask), mh(q, k, k, mask.expand(2, 3, 4)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_from_fused_path_have_finite_gradients(backend):
    attn = attnzoo.create("dot", backend=backend)
    q = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    k = torch.tensor([[[0.0, 0.0], [200.0, 0.0]]], requires_grad=True)
    for lens in ([1], [0]):
        _, w = attn(q, k, torch.randn(1, 2, 3), valid_lens=torch.tensor(lens), return_weights=True)
        w.sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_hard_attention_with_only_minus_inf_scores_picks_nothing():
    attn = attnzoo.create("hard", score="nadaraya_watson", kernel="boxcar")
    q, k, v = torch.tensor([[[10.0]]]), torch.tensor([[[0.0], [1.0], [2.0]]]), torch.tensor([[[5.0], [6.0], [7.0]]])
    out, w = attn(q, k, v, return_weights=True)
    assert (out == 0).all() and (w == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_padding_does_not_leak(backend):
    attn = attnzoo.create("soft", backend=backend)
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 2)
    v[0, 3:] = float("nan")
    out = attn(q, k, v, valid_lens=torch.tensor([3, 5]))
    assert torch.isfinite(out).all()


def test_fused_refuses_a_dtype_without_kernel():
    from attnzoo import ops

    if not ops.EXTENSION:
        pytest.skip("extension not built")
    attn = attnzoo.create("soft", backend="fused")
    q = torch.randn(1, 2, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="backend: 'fused' has no cpu kernel for torch.float16"):
        attn(q, q, q)
