"""Edge cases of the ops themselves (compiled kernels when built, else the eager ops)."""

import pytest
import torch

from attnzoo.ops import reference

OPS = torch.ops.attnzoo


@pytest.mark.parametrize("pooling", [0, 1, 2])
def test_backward_of_non_contiguous_inputs_passes_opcheck(pooling):
    q = torch.randn(2, 4, 3).transpose(1, 2)
    k, v, kb = torch.randn(2, 5, 4), torch.randn(2, 5, 2), torch.randn(5, 2).T
    saved = OPS.bilinear_fwd(q, k, v, kb, 0.5, None, None, None, None, pooling, False, -1)
    args = (torch.randn(2, 3, 2), None, q, k, v, kb, 0.5, None, None, None, None, pooling, False, -1, False, *saved[:4])
    torch.library.opcheck(OPS.bilinear_bwd.default, args)


@pytest.mark.parametrize("fwd", [OPS.bilinear_fwd, reference.bilinear_fwd])
def test_rows_of_only_minus_inf_scores_are_empty(fwd):
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    kb = torch.full((1, 5), float("-inf"))
    kb[0, 4] = 0.0
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[0, 1, 4] = False  # query 1 sees only -inf scores
    for pooling in (0, 1):
        out, lse, argmax, *_ = fwd(q, k, v, kb, 1.0, None, mask, None, None, pooling, False, -1)
        assert torch.isfinite(out).all() and (out[0, 1] == 0).all() and lse[0, 1] == float("-inf")
        torch.testing.assert_close(out[0, 0], v[0, 4])
        if pooling == 1:
            assert argmax.tolist() == [[4, -1, 4]]


def test_hard_pooling_without_keys():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 0, 4), torch.randn(2, 0, 5)
    for fwd in (OPS.bilinear_fwd, reference.bilinear_fwd):
        out, lse, argmax, *_ = fwd(q, k, v, None, 1.0, None, None, None, None, 1, False, -1)
        assert (out == 0).all() and (argmax == -1).all() and torch.isneginf(lse).all()


def test_a_huge_window_means_no_window():
    q, k, v = torch.randn(2, 5, 4), torch.randn(2, 7, 4), torch.randn(2, 7, 3)
    for pooling in (0, 1, 2):
        want = OPS.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, pooling, False, -1)
        got = OPS.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, pooling, False, 2**63 - 1)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)


def test_backward_rejects_an_out_of_range_argmax():
    from attnzoo import ops

    if not ops.EXTENSION:
        pytest.skip("the eager ops index with torch and raise their own error")
    q, k, v = torch.randn(2, 1, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 2)
    out, lse, argmax, soft, _ = OPS.bilinear_fwd(q, k, v, None, 1.0, None, None, None, None, 1, False, -1)
    with pytest.raises(RuntimeError, match=r"argmax must lie in \[-1, Nk\) = \[-1, 3\), got \[0, 3\]"):
        OPS.bilinear_bwd(torch.ones(2, 1, 2), None, q, k, v, None, 1.0, None, None, None, None, 1, False, -1, False,
                         out, lse, torch.tensor([[3], [0]]), soft)
