"""Bad input raises an error naming the argument, what it got and what it needs."""

import pytest
import torch

import attnzoo

Q, K, V = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda a: a(Q, K, V[:, :4]), ValueError,
     r"value: needs one row per key, Nk = key.shape\[-2\] = 5, got value \(2, 4, 6\)"),
    (lambda a: a(Q, K[:1], V[:1]), ValueError, r"batch dims must be equal.*\(2,\), \(1,\), \(1,\)"),
    (lambda a: a(Q, K.double(), V), TypeError, "key: dtype torch.float64 differs from query's torch.float32"),
    (lambda a: a(Q, K, V, torch.ones(2, 3, 4, dtype=torch.bool)), ValueError,
     r"mask: shape \(2, 3, 4\) does not broadcast to \(..., Nq, Nk\) = \(2, 3, 5\)"),
    (lambda a: a(Q, K, V, torch.ones(2, 3, 5)), TypeError, "mask: expected a bool tensor"),
    (lambda a: a(Q, K, V, valid_lens=torch.tensor([1, 2, 3])), ValueError,
     r"valid_lens: expected shape \(2,\) .* or \(2, 3\) .* got \(3,\)"),
    (lambda a: a(Q, K, V, valid_lens=torch.tensor([1.0, 2.0])), TypeError, "valid_lens: expected an integer tensor"),
    (lambda a: a(Q, K, V, valid_lens=torch.tensor([1, -1])), ValueError, "valid_lens: lengths must be >= 0"),
    (lambda a: a(Q.int(), K, V), TypeError, "query: expected dtype float16, bfloat16, float32 or float64"),
    (lambda a: a(Q[0, 0], K, V), ValueError, r"query: expected shape \(..., N, D\)"),
    (lambda a: a(torch.randn(2, 3, 5), K, V), ValueError, "key: score ScaledDot compares query and key directly"),
])
def test_errors_name_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(attnzoo.create("soft"))


def test_scores_check_their_dims():
    attn = attnzoo.create("general", query_dim=4, key_dim=3)
    with pytest.raises(ValueError, match=r"key: score General was built with key_dim=3, got key of shape \(2, 5, 4\)"):
        attn(Q, K, V)


@pytest.mark.parametrize("kw, pattern", [
    ({"window": -1}, "window: expected None or an int >= 0"),
    ({"window": 1.5}, "window: expected None or an int >= 0"),
])
def test_option_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        attnzoo.create("local", **kw)


def test_option_value_errors():
    with pytest.raises(ValueError, match="temperature: expected > 0"):
        attnzoo.create("cosine", temperature=0)
    with pytest.raises(ValueError, match="kernel: got 'box'"):
        attnzoo.create("nadaraya_watson", kernel="box")


def test_unbatched_inputs_and_d2l_lengths():
    attn = attnzoo.create("dot")
    out = attn(Q[0], K[0], V[0], valid_lens=torch.tensor(2))
    assert out.shape == (3, 6)
    torch.testing.assert_close(out, attn(Q[0], K[0, :2], V[0, :2]))
