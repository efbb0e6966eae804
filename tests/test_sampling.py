"""Stochastic hard attention (attnzoo.sampling): the draws, the noise, the two gradient estimators.

Statistical tests use fixed seeds (so they are deterministic) and thresholds with a false-positive rate
of about 1e-6 for a correct implementation; each comes with a negative control showing that the same
test rejects a wrong distribution or estimator. Chi-square p-values: ``Q(df / 2, x / 2)``, the
regularised upper incomplete gamma function (``torch.special.gammaincc``), exact, no scipy needed.
"""

import math

import pytest
import torch

from attnzoo import sampling
from attnzoo.sampling import (
    ReinforceBaseline,
    draw_seed,
    gumbel_noise,
    noise_ids,
    philox4x32,
    sample_keys,
    sampled_weights,
    uniform,
)

ALPHA = 1e-6  # false-positive rate of each statistical check


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The noise is ~200 small int64 ops: on a busy machine intra-op threads mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square goodness of fit of ``counts`` to ``probs`` (cells with p = 0 must be empty)."""
    counts, probs = counts.double(), probs.double()
    assert (counts[probs == 0] == 0).all(), "a zero-probability cell was drawn"
    keep = probs > 0
    n = counts.sum()
    expected = n * probs[keep]
    assert expected.min() >= 5, "too few expected counts for the chi-square approximation"
    x = ((counts[keep] - expected) ** 2 / expected).sum()
    df = keep.sum() - 1
    return float(torch.special.gammaincc(df / 2.0, x / 2.0))


def frequencies(index: torch.Tensor, nk: int) -> torch.Tensor:
    return torch.bincount(index.reshape(-1), minlength=nk)


# --- (a) the draws follow softmax over the valid keys -------------------------------------------------------

CASES = {
    "plain": (torch.tensor([0.3, -1.0, 1.2, 0.0, 0.7, -0.4]), None),
    "masked": (torch.tensor([0.3, 5.0, 1.2, 0.0, 9.0, -0.4]), torch.tensor([True, False, True, True, False, True])),
    "uncentred": (1000.0 + torch.tensor([0.5, -0.75, 1.25, 0.0, 0.25, -1.5]), None),
    "uncentred_masked": (-1000.0 + torch.tensor([0.5, -0.75, 1.25, 0.0, 0.25, 2.0]),
                         torch.tensor([True, True, True, True, True, False])),
    "neg_inf_key": (torch.tensor([0.3, float("-inf"), 1.2, 0.0, 0.7, -0.4]), None),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_frequencies_match_softmax_over_rows(case, dtype):
    s, valid = CASES[case]
    n, nk = 20000, s.numel()
    scores = s.to(dtype).expand(n, 1, nk)  # same scores, 20000 different row ids
    index = sample_keys(scores, valid, seed=12345)
    assert index.shape == (n, 1) and index.dtype == torch.int64
    logits = s.double() if valid is None else s.double().masked_fill(~valid, float("-inf"))
    counts = frequencies(index, nk)
    if valid is not None:
        assert (counts[~valid] == 0).all(), "a masked key was drawn"
    assert chi2_pvalue(counts, torch.softmax(logits, -1)) > ALPHA
    # negative control: the same test rejects a wrong distribution (the temperature-2 softmax)
    wrong = torch.softmax(logits / 2, -1)
    assert chi2_pvalue(counts, wrong) < ALPHA


def test_frequencies_match_softmax_over_seeds():
    s = torch.tensor([[[0.0, 1.0, -0.5, 0.4]]], dtype=torch.float64)
    index = torch.cat([sample_keys(s, None, seed) for seed in range(800)]).reshape(-1)
    p = torch.softmax(s[0, 0], -1)
    counts = frequencies(index, 4)
    assert chi2_pvalue(counts, p) > ALPHA
    assert chi2_pvalue(counts, torch.full((4,), 0.25, dtype=torch.float64)) < ALPHA


def test_draws_vary_over_batch_and_queries():
    """Rows are ``flat(batch, query)``: equal scores in different batch entries and queries draw independently."""
    s = torch.zeros(4, 3, 50, 8)
    index = sample_keys(s, None, seed=7)
    assert index.shape == (4, 3, 50)
    flat = index.reshape(-1, 50)
    for a in range(flat.shape[0]):
        for b in range(a + 1, flat.shape[0]):
            assert (flat[a] != flat[b]).sum() > 25  # independent uniform draws over 8 keys: 7/8 differ
    assert chi2_pvalue(frequencies(index, 8), torch.full((8,), 1 / 8, dtype=torch.float64)) > ALPHA


def test_draw_is_gumbel_max_and_independent_of_dtype_and_estimator():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 6, 9, generator=g, dtype=torch.float64) * 3
    valid = torch.rand(2, 6, 9, generator=g) > 0.3
    rows, keys = noise_ids((2,), 6, 9)
    expected = (s + gumbel_noise(99, rows, keys)).masked_fill(~valid, float("-inf")).argmax(-1)
    expected = torch.where(valid.any(-1), expected, -1)
    idx64 = sample_keys(s, valid, 99)
    assert torch.equal(idx64, expected)
    assert torch.equal(sample_keys(s.float().double(), valid, 99), sample_keys(s.float(), valid, 99))
    for est in sampling.ESTIMATORS:
        w, idx, _ = sampled_weights(s, valid, 99, est, tau=0.7)
        assert torch.equal(idx, idx64)
        hot = torch.zeros_like(s).scatter_(-1, idx.clamp_min(0).unsqueeze(-1), 1.0) * valid.any(-1, keepdim=True)
        assert torch.equal(w.detach(), hot)


# --- (b) the noise ------------------------------------------------------------------------------------------

KAT = [  # Random123 tests/kat_vectors, philox4x32 10: counter[4], key[2] -> output[4]
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    out = philox4x32(tuple(torch.tensor([c]) for c in ctr), key)
    assert [int(o) for o in out] == list(want)


def test_uniform_is_uniform():
    n_rows, n_keys = 2000, 100
    u = uniform(2024, torch.arange(n_rows).view(-1, 1), torch.arange(n_keys))
    assert u.dtype == torch.float64 and u.shape == (n_rows, n_keys)
    assert u.min() > 0 and u.max() < 1
    flat = u.reshape(-1)
    n = flat.numel()
    # Kolmogorov-Smirnov: P(sqrt(n) D > 2.7) ~ 2 exp(-2 * 2.7^2) < 1e-6
    srt = flat.sort().values
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - srt, srt - (i - 1) / n).max()
    assert math.sqrt(n) * d < 2.7
    # chi-square on 256 coarse bins (the top bits) and on 256 bins of the lowest bits of the 52-bit integer
    coarse = torch.bincount((flat * 256).long(), minlength=256)
    fine = torch.bincount(((flat * 2.0**52 - 0.5).long() & 255), minlength=256)
    even = torch.full((256,), 1 / 256, dtype=torch.float64)
    assert chi2_pvalue(coarse, even) > ALPHA and chi2_pvalue(fine, even) > ALPHA
    # no correlation between neighbouring keys, rows, or seeds: |r| sqrt(n) < 5
    for a, b in ((u[:, 1:], u[:, :-1]), (u[1:], u[:-1]),
                 (u, uniform(2025, torch.arange(n_rows).view(-1, 1), torch.arange(n_keys)))):
        r = torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]))[0, 1]
        assert abs(float(r)) * math.sqrt(a.numel()) < 5
    # negative control: the KS bound rejects u^1.05
    d_bad = torch.maximum(i / n - srt ** 1.05, srt ** 1.05 - (i - 1) / n).max()
    assert math.sqrt(n) * d_bad > 2.7


def test_unit_interval_ends_are_strict():
    m32 = 0xFFFFFFFF
    lo = sampling._unit_interval(torch.tensor([0]), torch.tensor([0]))
    hi = sampling._unit_interval(torch.tensor([m32]), torch.tensor([m32]))
    assert float(lo) == 2.0**-53 and float(hi) == 1 - 2.0**-53
    g = -torch.log(-torch.log(torch.cat([lo, hi])))
    assert torch.isfinite(g).all()


def test_gumbel_moments():
    g = gumbel_noise(5, torch.arange(1000).view(-1, 1), torch.arange(200))
    n = g.numel()
    var = math.pi**2 / 6
    assert abs(float(g.mean()) - 0.5772156649) < 5 * math.sqrt(var / n)
    assert abs(float(g.var()) - var) < 5 * math.sqrt((12 / 5 + 2) * var**2 / n)  # excess kurtosis 12/5


def test_noise_is_independent_of_blocking():
    batch, nq, nk = (2, 3), 10, 13
    full = gumbel_noise(77, *noise_ids(batch, nq, nk))
    assert full.shape == (*batch, nq, nk)
    for qr in (range(0, 4), range(4, 10), range(7, 8)):
        for kr in (range(0, 5), range(5, 13), range(12, 13)):
            block = gumbel_noise(77, *noise_ids(batch, nq, nk, query_range=qr, key_range=kr))
            assert torch.equal(block, full[..., qr.start:qr.stop, kr.start:kr.stop])
    rows, keys = noise_ids(batch, nq, nk)
    flat_rows = rows.reshape(-1)  # another shape: rows along the last dim, keys along the first
    assert torch.equal(gumbel_noise(77, flat_rows, keys.view(-1, 1)).T.reshape(full.shape), full)
    assert torch.equal(gumbel_noise(77, rows, keys, torch.float32), full.float())
    # element by element, with int32 ids
    for r, k in ((0, 0), (17, 4), (59, 12)):
        one = gumbel_noise(77, torch.tensor(r, dtype=torch.int32), torch.tensor(k, dtype=torch.int32))
        assert torch.equal(one, full.reshape(-1, nk)[r, k])


def test_blockwise_draw_matches_full_draw():
    """A block pass with ``ids`` sees the full problem's noise: its local arg-max of ``s + g`` over a key block,
    merged across blocks, is the full draw."""
    g = torch.Generator().manual_seed(8)
    s = torch.randn(2, 6, 10, generator=g, dtype=torch.float64)
    full = sample_keys(s, None, 41)
    best = torch.full((2, 6), float("-inf"), dtype=torch.float64)
    arg = torch.full((2, 6), -1)
    for kr in (range(0, 3), range(3, 7), range(7, 10)):
        ids = noise_ids((2,), 6, 10, key_range=kr)
        local = sample_keys(s[..., kr.start:kr.stop], None, 41, ids=ids)
        z = (s[..., kr.start:kr.stop] + gumbel_noise(41, *ids)).gather(-1, local.unsqueeze(-1)).squeeze(-1)
        better = z > best
        best, arg = torch.where(better, z, best), torch.where(better, local + kr.start, arg)
    assert torch.equal(arg, full)


def test_seeds_rows_and_keys_all_matter():
    rows, keys = torch.arange(64).view(-1, 1), torch.arange(64)
    base = uniform(1, rows, keys)
    for other in (uniform(2, rows, keys), uniform(1 + 2**32, rows, keys), uniform(2**63 + 1, rows, keys),
                  uniform(1, rows + 2**32, keys), uniform(1, rows, keys + 2**32)):
        assert (other != base).all()
    assert torch.unique(base).numel() == base.numel()
    s = torch.zeros(1000, 1, 5)
    assert (sample_keys(s, None, 1) != sample_keys(s, None, 2)).float().mean() > 0.7  # 4/5 expected


def test_draw_seed_is_reproducible():
    torch.manual_seed(123)
    a = [draw_seed() for _ in range(3)]
    torch.manual_seed(123)
    b = [draw_seed(None) for _ in range(3)]
    assert a == b and len(set(a)) == 3 and all(0 <= x < 2**62 for x in a)
    gen = torch.Generator().manual_seed(5)
    c = draw_seed(gen)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert draw_seed(torch.Generator().manual_seed(5)) == c
    assert torch.equal(torch.get_rng_state(), state)  # a generator leaves the global RNG alone
    assert draw_seed(gen) != c
    s = torch.randn(3, 4, 6)
    torch.manual_seed(9)
    i1 = sample_keys(s, None, draw_seed())
    torch.manual_seed(9)
    assert torch.equal(sample_keys(s, None, draw_seed()), i1)


# --- (c) gradient estimators --------------------------------------------------------------------------------

S0 = torch.tensor([0.4, -0.3, 1.1, 0.0], dtype=torch.float64)
V0 = torch.tensor([-1.0, 0.5, 2.0, -0.3], dtype=torch.float64)


def f(v):
    return 3.0 + v**2 + torch.sin(3 * v)  # nonlinear, with an offset that the baseline removes


def exact_gradient():
    s = S0.clone().requires_grad_()
    (torch.softmax(s, -1) * f(V0)).sum().backward()  # d/ds E[f(v_j*)] = d/ds sum_j p_j f(v_j)
    return s.grad


def per_sample_gradients(seed, baseline, n=20000, wrong=False):
    """REINFORCE estimates of d E[f(v_j*)] / ds, one per row: the rows' scores are separate leaves, so the
    gradient of the batch surrogate ``-(1/n) sum (r - b) log p`` at row ``n`` is ``-(1/n)`` its estimate."""
    s = S0.expand(n, 1, 4).clone().requires_grad_()
    w, index, log_prob = sampled_weights(s, None, seed, "reinforce")
    assert not w.requires_grad  # no pathwise gradient
    reward = f((w @ V0.view(4, 1)).reshape(n))  # f(v_j*), (n,)
    if wrong:  # negative control: the score of the draw without its normaliser, log p + logsumexp(s)
        log_prob = s.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    baseline.surrogate(log_prob, reward).backward()
    return -n * s.grad.reshape(n, 4)


def _check_unbiased(est, exact):
    mean, se = est.mean(0), est.std(0) / math.sqrt(est.shape[0])
    assert (se < 0.05 * exact.abs().max()).all(), f"standard errors {se} too large for a meaningful test"
    assert ((mean - exact).abs() < 4 * se).all(), f"mean {mean}, exact {exact}, se {se}"
    return se


def test_reinforce_is_unbiased_with_and_without_baseline():
    exact = exact_gradient()
    assert exact.abs().min() > 0.05
    no_base = ReinforceBaseline(decay=1.0)  # b stays 0
    se_plain = _check_unbiased(per_sample_gradients(101, no_base), exact)
    assert float(no_base.baseline) == 0
    base = ReinforceBaseline(decay=0.5)
    for seed in range(10):  # warm up: b -> E[f] (0.5^10 of the start left)
        s = S0.expand(2000, 1, 4)
        w, _, lp = sampled_weights(s, None, 1000 + seed, "reinforce")
        base.surrogate(lp, f((w @ V0.view(4, 1)).reshape(2000)))
    expected_f = float((torch.softmax(S0, -1) * f(V0)).sum())
    assert abs(float(base.baseline) - expected_f) < 0.15
    se_base = _check_unbiased(per_sample_gradients(202, base), exact)
    assert se_base.norm() < 0.5 * se_plain.norm()  # the baseline's point: lower variance (in total)
    # negative control: without the normaliser the estimator is biased, and the same test sees it
    bad = per_sample_gradients(101, ReinforceBaseline(decay=1.0), wrong=True)
    bad_mean, bad_se = bad.mean(0), bad.std(0) / math.sqrt(bad.shape[0])
    assert ((bad_mean - exact).abs() > 10 * bad_se).any()


def test_baseline_update_and_sign():
    base = ReinforceBaseline(decay=0.9)
    lp = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], requires_grad=True)
    r1 = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = base.surrogate(lp, r1)
    # b was 0: L = -(1/2) sum_n r_n sum_q lp_nq
    assert torch.allclose(loss, -(r1.detach().view(2, 1) * lp.detach()).sum() / 2)
    loss.backward()
    assert torch.allclose(lp.grad, -r1.detach().view(2, 1).expand(2, 2) / 2)
    assert r1.grad is None  # no gradient through the reward
    assert float(base.baseline) == pytest.approx(0.1 * 2.0)
    lp.grad = None
    r2 = torch.tensor([0.0, 1.0])
    base.surrogate(lp, r2).backward()  # uses the old b = 0.2, then b = 0.9 * 0.2 + 0.1 * 0.5
    assert torch.allclose(lp.grad, -(r2 - 0.2).view(2, 1).expand(2, 2) / 2)
    assert float(base.baseline) == pytest.approx(0.9 * 0.2 + 0.1 * 0.5)
    base.surrogate(lp, r2, update=False)
    assert float(base.baseline) == pytest.approx(0.9 * 0.2 + 0.1 * 0.5)
    assert "baseline" in base.state_dict()
    # per-query rewards: shape (B, Nq)
    lp.grad = None
    r3 = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    b = float(base.baseline)
    base.surrogate(lp, r3).backward()
    assert torch.allclose(lp.grad, -(r3 - b) / 2)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_gumbel_straight_through_gradient(tau):
    g = torch.Generator().manual_seed(11)
    s = (torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 2).requires_grad_()
    valid = torch.rand(2, 5, 7, generator=g) > 0.3
    valid[0, 1] = False
    up = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    w, index, _ = sampled_weights(s, valid, 31, "gumbel", tau=tau)
    (w * up).sum().backward()
    s2 = s.detach().clone().requires_grad_()
    noise = gumbel_noise(31, *noise_ids((2,), 5, 7))
    y = torch.softmax(((s2 + noise) / tau).masked_fill(~valid, float("-inf")), -1).nan_to_num(0.0)
    (y * up).sum().backward()
    assert s2.grad.abs().max() > 0
    torch.testing.assert_close(s.grad, s2.grad, atol=1e-12, rtol=1e-10)
    assert (s.grad[0, 1] == 0).all() and (s.grad[~valid] == 0).all()
    assert ((w == 0) | (w == 1)).all() and (index[0, 1] == -1)


def test_gumbel_forward_frequencies():
    s = torch.tensor([0.5, -0.2, 1.0, 0.1], dtype=torch.float64)
    w, index, _ = sampled_weights(s.expand(20000, 1, 4), None, 8, "gumbel", tau=0.3)
    counts = w.detach().sum((0, 1))
    assert torch.equal(counts.long(), frequencies(index, 4))
    assert chi2_pvalue(counts, torch.softmax(s, -1)) > ALPHA  # exact draws whatever tau
    assert chi2_pvalue(counts, torch.softmax(s / 0.3, -1)) < ALPHA


def test_log_prob_is_log_softmax_of_the_draw():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 4, 6, generator=g, dtype=torch.float64).requires_grad_()
    valid = torch.rand(4, 6, generator=g) > 0.4
    valid[2] = False
    _, index, lp = sampled_weights(s, valid, 5, "reinforce")
    ls = torch.log_softmax(s.masked_fill(~valid, float("-inf")), -1)
    want = torch.where(index >= 0, ls.gather(-1, index.clamp_min(0).unsqueeze(-1)).squeeze(-1), 0.0)
    torch.testing.assert_close(lp, want.nan_to_num(0.0))
    lp.sum().backward()
    assert torch.isfinite(s.grad).all() and (s.grad[:, 2] == 0).all() and s.grad.abs().max() > 0


# --- (d) empty rows, dtypes, errors -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("estimator", sampling.ESTIMATORS)
def test_empty_rows(estimator, dtype):
    s = torch.randn(2, 4, 5, dtype=torch.float64).to(dtype)
    s[1, 2] = float("-inf")  # all scores -inf: no key
    s = s.requires_grad_()
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[0, 1] = False  # all masked
    valid[1, 3, :4] = False  # one key left
    w, index, lp = sampled_weights(s, valid, 3, estimator)
    assert w.dtype == dtype and lp.dtype == dtype and index.shape == (2, 4)
    assert index[0, 1] == -1 and index[1, 2] == -1 and index[1, 3] == 4
    assert (w[0, 1] == 0).all() and (w[1, 2] == 0).all() and lp[0, 1] == 0 and lp[1, 2] == 0
    assert lp[1, 3] == 0  # the only key: probability 1
    assert torch.isfinite(w).all() and torch.isfinite(lp).all()
    (w.float() * torch.randn(2, 4, 5)).sum().add(lp.float().sum()).backward()
    assert torch.isfinite(s.grad).all()
    assert (s.grad[0, 1] == 0).all() and (s.grad[1, 2] == 0).all() and (s.grad[1, 3] == 0).all()


@pytest.mark.parametrize("estimator", sampling.ESTIMATORS)
def test_degenerate_shapes_and_all_masked(estimator):
    for shape in ((2, 3, 0), (2, 0, 4), (0, 3, 4)):
        s = torch.randn(shape, requires_grad=True)
        w, index, lp = sampled_weights(s, None, 1, estimator)
        assert w.shape == shape and index.shape == shape[:-1] and lp.shape == shape[:-1]
        assert (index == -1).all()
        (w.sum() + lp.sum()).backward()
    s = torch.randn(3, 4, 5, requires_grad=True)
    w, index, lp = sampled_weights(s, torch.zeros(5, dtype=torch.bool), 1, estimator)
    assert (index == -1).all() and (w == 0).all() and (lp == 0).all()
    (w.sum() + lp.sum()).backward()
    assert (s.grad == 0).all()


def test_nan_score_is_not_hidden():
    s = torch.tensor([[[0.0, float("nan"), 1.0]]])
    w, index, lp = sampled_weights(s, None, 1, "gumbel")
    assert torch.isnan(w).any() and torch.isnan(lp).all()


def test_errors_name_the_argument():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="estimator: got 'st'"):
        sampled_weights(s, None, 0, "st")
    for tau in (0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="tau"):
            sampled_weights(s, None, 0, "gumbel", tau=tau)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            sample_keys(s, None, seed)
    for seed in (1.5, True, None):
        with pytest.raises(TypeError, match="seed"):
            sample_keys(s, None, seed)
    with pytest.raises(TypeError, match="scores"):
        sample_keys(torch.ones(2, 3, dtype=torch.int64), None, 0)
    with pytest.raises(ValueError, match="scores"):
        sample_keys(torch.ones(3), None, 0)
    with pytest.raises(TypeError, match="valid"):
        sample_keys(s, torch.ones(2, 3), 0)
    with pytest.raises(ValueError, match="valid"):
        sample_keys(s, torch.ones(4, 2, 3, dtype=torch.bool), 0)
    with pytest.raises(TypeError, match="rows"):
        uniform(0, torch.ones(3), torch.arange(3))
    with pytest.raises(ValueError, match="ids: rows"):
        sample_keys(s, None, 0, ids=noise_ids((), 2, 4))
    with pytest.raises(ValueError, match="query_range"):
        noise_ids((2,), 4, 5, query_range=range(2, 6))
    for decay in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="decay"):
            ReinforceBaseline(decay)
    base = ReinforceBaseline()
    with pytest.raises(ValueError, match="reward"):
        base.surrogate(torch.zeros(4, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="reward"):
        base.surrogate(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="log_prob"):
        base.surrogate(torch.zeros(()), torch.zeros(()))
    assert float(base.baseline) == 0  # failed calls leave b alone
