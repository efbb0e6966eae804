"""Multi-head attention and equivalence with torch.nn.MultiheadAttention."""

import pytest
import torch

import attnzoo


@pytest.mark.parametrize("kdim, vdim, bias", [(None, None, True), (6, 10, True), (None, None, False)])
@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_from_torch_matches_outputs_and_per_head_weights(kdim, vdim, bias, backend):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(8, 4, kdim=kdim, vdim=vdim, bias=bias, batch_first=True).eval()
    ours = attnzoo.from_torch(mha, backend=backend)
    q = torch.randn(3, 5, 8)
    k = torch.randn(3, 7, kdim or 8)
    v = torch.randn(3, 7, vdim or 8)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 4:] = True
    pad[2, 1:] = True
    want, want_w = mha(q, k, v, key_padding_mask=pad, average_attn_weights=False)
    got, got_w = ours(q, k, v, ~pad[:, None, :], return_weights=True)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got_w, want_w, atol=2e-6, rtol=1e-5)


def test_from_torch_rejects_what_it_cannot_express():
    with pytest.raises(ValueError, match="from_torch takes only backend"):
        attnzoo.from_torch(torch.nn.MultiheadAttention(8, 2), score="dot")
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        attnzoo.from_torch(torch.nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(TypeError, match="mha: expected torch.nn.MultiheadAttention"):
        attnzoo.from_torch(torch.nn.Linear(2, 2))


def test_multihead_options_and_errors():
    mh = attnzoo.create("multihead", embed_dim=8, num_heads=2, score="additive", hidden_dim=5, pooling="hard")
    assert mh.inner.score.query_dim == 4 and mh.inner.score.hidden_dim == 5
    out, w = mh(torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8), return_weights=True)
    assert out.shape == (2, 3, 8) and w.shape == (2, 2, 3, 4)
    assert ((w == 0) | (w == 1)).all()
    with pytest.raises(ValueError, match="num_heads: must divide embed_dim = 8, got 3"):
        attnzoo.create("multihead", embed_dim=8, num_heads=3)
    with pytest.raises(ValueError, match=r"query: expected last dim 8, got shape \(2, 3, 6\)"):
        mh(torch.randn(2, 3, 6), torch.randn(2, 4, 8), torch.randn(2, 4, 8))
