"""``create("hard", sample=True, ...)``: stochastic hard attention as a variant (the draws themselves are tested
in ``tests/test_sampling.py``): training draws follow the softmax, eval is the arg-max, reproducible seeds,
both estimators' gradients, options and errors."""

from __future__ import annotations

import pytest
import torch

import attnzoo
import attnzoo.ops as ops


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_training_draws_follow_the_softmax_and_eval_is_argmax():
    attn = attnzoo.create("hard", sample=True, seed=0).double()
    k, v = rnd(1, 5, 4, seed=1), rnd(1, 5, 3, seed=2)
    q = rnd(1, 1, 4, seed=3).expand(1, 20000, 4)
    _, w = attn(q, k, v, return_weights=True)
    freq = w[0].sum(0) / 20000
    p = torch.softmax(q[0, :1] @ k[0].T / 2.0, -1)[0]
    se = (p * (1 - p) / 20000).sqrt()
    assert ((freq - p).abs() < 5 * se).all(), (freq, p)
    attn.eval()
    out, w = attn(q[:, :3], k, v, return_weights=True)
    torch.testing.assert_close(out, attnzoo.create("hard").double()(q[:, :3], k, v))


def test_reproducible_from_seed_generator_and_manual_seed():
    q, k, v = rnd(2, 6, 4), rnd(2, 7, 4, seed=1), rnd(2, 7, 3, seed=2)
    a, b = attnzoo.create("hard", sample=True, seed=5), attnzoo.create("hard", sample=True, seed=5)
    first = [a(q, k, v) for _ in range(3)]
    for x, y in zip(first, [b(q, k, v) for _ in range(3)], strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(first[0], first[1])  # each call draws afresh
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(attnzoo.create("hard", sample=True, generator=g1)(q, k, v),
                       attnzoo.create("hard", sample=True, generator=g2)(q, k, v))
    c = attnzoo.create("hard", sample=True)
    torch.manual_seed(3)
    x = c(q, k, v)
    torch.manual_seed(3)
    assert torch.equal(x, c(q, k, v))


def test_gumbel_gradient_is_pathwise_and_reinforce_goes_through_the_surrogate():
    q, k, v = rnd(2, 6, 4).requires_grad_(), rnd(2, 7, 4, seed=1), rnd(2, 7, 3, seed=2)
    gumbel = attnzoo.create("hard", sample=True, seed=0, tau=0.5)
    (g,) = torch.autograd.grad(gumbel(q, k, v).sum(), q)
    assert g.abs().sum() > 0
    reinforce = attnzoo.create("hard", sample=True, estimator="reinforce", seed=0)
    out = reinforce(q, k, v)
    assert out.grad_fn is None or torch.autograd.grad(out.sum(), q, allow_unused=True)[0] is None
    reward = -(out.detach() ** 2).sum((1, 2))
    (g,) = torch.autograd.grad(reinforce.reinforce_loss(reward), q)
    assert g.abs().sum() > 0
    assert "sampler.baseline.baseline" in reinforce.state_dict()
    assert float(reinforce.state_dict()["sampler.baseline.baseline"]) != 0  # updated by the call


def test_masks_and_capabilities():
    attn = attnzoo.create("hard", sample=True, seed=1)
    q, k, v = rnd(2, 300, 4), rnd(2, 7, 4, seed=1), rnd(2, 7, 3, seed=2)
    _, w = attn(q * 0.1, k, v, valid_lens=torch.tensor([3, 7]), return_weights=True)
    assert (w[0, :, 3:] == 0).all() and (w.sum(-1) == 1).all()
    assert "stochastic" in attn.capabilities and "stochastic" not in attn.eval().capabilities
    expected = "kernels draw" if ops.EXTENSION else "reference"
    assert expected in attn.train().explain(q, k, v)
    reinforce = attnzoo.create("hard", sample=True, estimator="reinforce")
    assert "reference" in reinforce.explain(q, k, v)


@pytest.mark.parametrize("options,arg", [
    (dict(estimator="reinforce"), "sample"),
    (dict(sample=True, estimator="score"), "estimator"),
    (dict(sample=True, tau=0.0), "tau"),
    (dict(sample=True, backend="fused"), "backend"),
    (dict(sample=True, seed=1, generator=torch.Generator()), "seed"),
])
def test_errors_name_the_argument(options, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        attnzoo.create("hard", **options)


def test_reinforce_loss_errors():
    with pytest.raises(ValueError, match="reward"):
        attnzoo.create("hard", sample=True).reinforce_loss(torch.zeros(2))
    with pytest.raises(ValueError, match="reward"):
        attnzoo.create("hard", sample=True, estimator="reinforce").reinforce_loss(torch.zeros(2))
    with pytest.raises(ValueError, match="sample"):
        attnzoo.create("soft").reinforce_loss(torch.zeros(2))


@pytest.mark.skipif(not ops.EXTENSION, reason="attnzoo._C is not built")
@pytest.mark.parametrize("score,options", [("scaled_dot", {}),
                                           ("additive", dict(query_dim=4, key_dim=4, hidden_dim=6))])
def test_the_kernels_draw_the_reference_draws(score, options):
    """The CPU kernels add the same Philox noise as attnzoo.sampling: same draws, outputs and straight-through
    gradients as the reference (float64), with masks, batch dims and tau != 1."""
    torch.manual_seed(0)
    fused = attnzoo.create("hard", score=score, sample=True, seed=11, tau=0.5, **options).double()
    torch.manual_seed(0)
    refd = attnzoo.create("hard", score=score, sample=True, seed=11, tau=0.5, backend="reference", **options).double()
    q, k, v = rnd(2, 3, 40, 4).requires_grad_(), rnd(2, 3, 300, 4, seed=1).requires_grad_(), rnd(2, 3, 300, 2, seed=2)
    lengths = torch.tensor([[300, 7, 0], [300, 300, 1]])
    assert "kernels draw" in fused.explain(q, k, v)
    for _ in range(2):  # successive calls draw afresh, in step
        out = fused(q, k, v, valid_lens=lengths)
        want = refd(q, k, v, valid_lens=lengths)
        torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
        g = rnd(*out.shape, seed=5)
        got_g = torch.autograd.grad((out * g).sum(), (q, k))
        want_g = torch.autograd.grad((want * g).sum(), (q, k))
        for a, b in zip(got_g, want_g, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.skipif(not ops.EXTENSION, reason="attnzoo._C is not built")
def test_kernel_noise_op_level_gradcheck_and_opcheck():
    from attnzoo.ops import reference as ref

    q, k, v = rnd(2, 5, 3), rnd(2, 9, 3, seed=1), rnd(2, 9, 2, seed=2)
    margs = (None, None, None, None, 1, True, -1)
    got = torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 0.7, *margs, False, 123, 0.8)
    want = ref.bilinear_fwd(q, k, v, None, 0.7, *margs, False, 123, 0.8)
    assert torch.equal(got[2], want[2])  # the draws
    for a, b in zip(got[:2] + got[3:4], want[:2] + want[3:4], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    other = torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 0.7, *margs, False, 124, 0.8)[2]
    assert not torch.equal(other, got[2])  # another seed, other draws
    ts = [t.clone().requires_grad_() for t in (q, k, v)]
    # the value's gradient is the true one (the scores' is straight-through: the tests above hold it to the reference)
    assert torch.autograd.gradcheck(lambda v_: ops.bilinear_attention(q, k, v_, scale=0.7, pooling="hard", causal=True,
                                                                      seed=123, tau=0.8)[0], (ts[2],))
    torch.library.opcheck(torch.ops.attnzoo.bilinear_fwd.default, (*ts, None, 0.7, *margs, False, 123, 0.8))
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 0.7, None, None, None, None, 0, False, -1, False, 1, 1.0)
    with pytest.raises(RuntimeError, match="tau"):
        torch.ops.attnzoo.bilinear_fwd(q, k, v, None, 0.7, *margs, False, 1, 0.0)
