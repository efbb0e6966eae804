"""Stochastic hard attention (Xu et al. 2015, "Show, Attend and Tell"): each query draws one key.

The draw of query row ``r`` is ``j* = argmax_{j valid} (s_rj + g(seed, r, j))`` with Gumbel noise
``g = -log(-log u)``, ``u ~ U(0, 1)``: the Gumbel-max trick, so ``P(j* = j) = softmax_valid(s_r)_j`` exactly.
The weights are the one-hot ``w_rj = 1[j = j*]``; the two gradient estimators differ in the backward:

* ``gumbel``:    straight-through Gumbel-softmax, ``w = onehot + y - y.detach()`` with
  ``y = softmax_valid((s + g) / tau)`` for the same noise ``g``. Biased by design (``tau -> 0``: less bias,
  more variance), pathwise: gradients reach the scores through the output.
* ``reinforce``: the score-function estimator. ``w`` is the constant one-hot (no pathwise gradient into the
  scores); the gradient comes from ``log p_rj* = s_rj* - logsumexp_valid(s_r)`` (returned, differentiable)
  through :class:`ReinforceBaseline`'s surrogate loss. Unbiased, with or without the baseline.

Noise is counter-based: ``u`` is a pure function of ``(seed, row, key)``, so any blocking of the
``(row, key)`` grid (a blockwise pass, a fused kernel, its backward's recompute) draws the same values.
``row`` is the flattened ``(batch..., query)`` index, ``key`` the absolute key position (:func:`noise_ids`).
The bits are Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"), counter
``(key_lo, key_hi, row_lo, row_hi)``, key ``(seed_lo, seed_hi)``; this implementation is ours, in int64
torch arithmetic on 32-bit words that never overflows (32 x 32-bit products are split into 16-bit halves,
every intermediate stays below 2^49). The tests check it against Random123's known-answer vectors and
check the uniforms statistically (KS, chi-square on coarse and low-order bins, lag correlations).

A row without a valid key of score ``> -inf`` draws nothing: index -1, zero weights, ``log_prob`` 0 and zero
gradients. A NaN score is not hidden: the row's draw, weights and ``log_prob`` follow the NaN (like torch).
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor, nn

from .pooling import masked_softmax, straight_through

ESTIMATORS = ("gumbel", "reinforce")

_M32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key schedule (Weyl) increments


def check_estimator(estimator) -> str:
    """``estimator``: ``"gumbel"`` or ``"reinforce"``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: got {estimator!r}, expected 'gumbel' or 'reinforce'")
    return estimator


def check_tau(tau) -> float:
    """``tau``: the Gumbel-softmax temperature, a finite number > 0."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau: expected a finite number > 0, got {tau!r}")
    return float(tau)


def check_seed(seed) -> int:
    """``seed``: an int in ``[0, 2**64)`` (numpy / 0-dim integer tensors accepted; not a bool)."""
    try:
        if isinstance(seed, bool):
            raise TypeError
        s = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed: expected an int in [0, 2**64), got {type(seed).__name__} {seed!r}") from None
    if not 0 <= s < 2**64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {s}")
    return s


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh seed in ``[0, 2**62)`` from ``generator`` (on its device), or from torch's global CPU RNG
    when None, so ``torch.manual_seed(n)`` makes a sequence of calls reproducible."""
    device = "cpu" if generator is None else generator.device
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64).item())


def _mulhilo(m: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(hi, lo)`` 32-bit words of ``m * x`` for a 32-bit constant ``m`` and words ``x`` (int64 in
    ``[0, 2^32)``): with ``m = mh 2^16 + ml`` and ``a = mh x < 2^48``,
    ``m x = (a >> 16) 2^32 + t``, ``t = ml x + (a & 0xFFFF) 2^16 < 2^49``."""
    a = x * (m >> 16)
    t = x * (m & 0xFFFF) + ((a & 0xFFFF) << 16)
    return (a >> 16) + (t >> 32), t & _M32


def philox4x32(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int, int],
               rounds: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32-``rounds`` of the 32-bit words ``counter`` (int64 tensors, broadcast together; bits above
    32 are ignored) under ``key`` (two 32-bit ints): four int64 tensors of words in ``[0, 2^32)``."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _M32 for c in counter)
    k0, k1 = key[0] & _M32, key[1] & _M32
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _PHILOX_W[0]) & _M32, (k1 + _PHILOX_W[1]) & _M32
        hi0, lo0 = _mulhilo(_PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(_PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _unit_interval(w0: Tensor, w1: Tensor) -> Tensor:
    """float64 ``u = (x + 1/2) / 2^52`` for the 52-bit ``x = w0 << 20 | w1 >> 12``: in ``[2^-53, 1 - 2^-53]``,
    both ends exact in float64, so strictly inside ``(0, 1)``."""
    x = (w0 << 20) | (w1 >> 12)
    return (x.to(torch.float64) + 0.5) * 2.0**-52


def _check_ids(name: str, t) -> Tensor:
    if not isinstance(t, Tensor) or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"{name}: expected an integer tensor, got {got}")
    return t.to(torch.int64)


def uniform(seed: int, rows: Tensor, keys: Tensor) -> Tensor:
    """float64 uniforms in ``(0, 1)`` of shape ``broadcast(rows, keys)``, a function of ``(seed, row, key)`` only.

    ``rows``, ``keys``: integer tensors (read as 64-bit patterns), e.g. ``rows (..., Nq, 1)``, ``keys (Nk,)``.
    """
    seed = check_seed(seed)
    rows, keys = _check_ids("rows", rows), _check_ids("keys", keys)
    w0, w1, _, _ = philox4x32((keys, keys >> 32, rows, rows >> 32), (seed & _M32, seed >> 32))
    return _unit_interval(w0, w1)


def gumbel_noise(seed: int, rows: Tensor, keys: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Standard Gumbel noise ``g = -log(-log u)`` (computed in float64, returned in ``dtype``) for
    :func:`uniform`'s ``u``: shape ``broadcast(rows, keys)``, values in about ``[-3.6, 36.7]``."""
    return (-torch.log(-torch.log(uniform(seed, rows, keys)))).to(dtype)


def noise_ids(batch: tuple[int, ...], nq: int, nk: int, *, query_range: range | None = None,
              key_range: range | None = None, device=None) -> tuple[Tensor, Tensor]:
    """The ``(rows, keys)`` ids of a problem with batch shape ``batch``, ``nq`` queries and ``nk`` keys,
    for the block of queries ``query_range`` and keys ``key_range`` (default: all).

    ``rows = flat(b) * nq + i``: int64 ``batch + (len(query_range), 1)``; ``keys = j``: int64 ``(len(key_range),)``.
    """
    qr = range(nq) if query_range is None else query_range
    kr = range(nk) if key_range is None else key_range
    if qr.step != 1 or qr.start < 0 or qr.stop > nq:
        raise ValueError(f"query_range: expected a range with step 1 inside range({nq}), got {qr}")
    if kr.step != 1 or kr.start < 0 or kr.stop > nk:
        raise ValueError(f"key_range: expected a range with step 1 inside range({nk}), got {kr}")
    nb = math.prod(batch)
    b = torch.arange(nb, dtype=torch.int64, device=device).view(*batch, 1, 1)
    i = torch.arange(qr.start, max(qr.start, qr.stop), dtype=torch.int64, device=device).view(-1, 1)
    keys = torch.arange(kr.start, max(kr.start, kr.stop), dtype=torch.int64, device=device)
    return b * nq + i, keys


def _check_scores(scores, valid) -> Tensor:
    if not isinstance(scores, Tensor) or not scores.dtype.is_floating_point:
        got = scores.dtype if isinstance(scores, Tensor) else type(scores).__name__
        raise TypeError(f"scores: expected a floating-point tensor, got {got}")
    if scores.dim() < 2:
        raise ValueError(f"scores: expected shape (..., Nq, Nk), got {tuple(scores.shape)}")
    if valid is None:
        return torch.ones((), dtype=torch.bool, device=scores.device)
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        got = valid.dtype if isinstance(valid, Tensor) else type(valid).__name__
        raise TypeError(f"valid: expected a bool tensor (True = key may be drawn), got {got}")
    try:
        ok = torch.broadcast_shapes(valid.shape, scores.shape) == scores.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"valid: shape {tuple(valid.shape)} does not broadcast to scores' {tuple(scores.shape)}")
    return valid


def _draw(scores: Tensor, valid: Tensor, seed: int, ids) -> tuple[Tensor, Tensor, Tensor]:
    """Noise ``g`` (float64, broadcast to scores), index (int64 ``(..., Nq)``, -1 where empty), has-key mask."""
    if ids is None:
        ids = noise_ids(tuple(scores.shape[:-2]), scores.shape[-2], scores.shape[-1], device=scores.device)
    rows, keys = ids
    try:
        ok = torch.broadcast_shapes(rows.shape, keys.shape) == scores.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"ids: rows {tuple(rows.shape)} and keys {tuple(keys.shape)} must broadcast to the scores' "
                         f"shape {tuple(scores.shape)} (see noise_ids)")
    g = gumbel_noise(seed, rows, keys)
    z = (scores.detach().to(torch.float64) + g).masked_fill(~valid, float("-inf"))
    has = (z != float("-inf")).any(-1)  # a NaN row "has" a key: its NaN propagates
    if scores.shape[-1] == 0:
        return g, torch.full(scores.shape[:-1], -1, dtype=torch.int64, device=scores.device), has
    return g, torch.where(has, z.argmax(-1), -1), has


def sample_keys(scores: Tensor, valid: Tensor | None, seed: int, *, ids: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """One key per query row drawn from ``softmax_valid(s)``: int64 ``(..., Nq)``, -1 for a row with no key.

    ``scores (..., Nq, Nk)``; ``valid``: bool broadcastable to it (None: all keys); ``ids``: the ``(rows, keys)``
    of :func:`noise_ids` for a block of a larger problem (default: this whole problem). The draw is
    ``argmax_valid(s + g)`` in float64 (so it does not depend on the scores' dtype), first index on ties.
    """
    valid = _check_scores(scores, valid)
    return _draw(scores, valid, check_seed(seed), ids)[1]


def sampled_weights(scores: Tensor, valid: Tensor | None, seed: int, estimator: str = "gumbel", tau: float = 1.0, *,
                    ids: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Stochastic hard attention weights: ``(weights (..., Nq, Nk), index (..., Nq), log_prob (..., Nq))``.

    ``weights`` are the one-hot of :func:`sample_keys`' ``index`` (the same draw for both estimators) in the
    scores' dtype. ``gumbel``: ``weights = onehot + y - y.detach()``, ``y = softmax_valid((s + g) / tau)``.
    ``reinforce``: ``weights`` carry no gradient. ``log_prob = s_{i j*} - logsumexp_valid(s_i)`` (both
    estimators; differentiable) feeds :meth:`ReinforceBaseline.surrogate`. Empty rows: index -1, zero weights,
    ``log_prob`` 0, zero gradients.
    """
    valid = _check_scores(scores, valid)
    estimator, tau, seed = check_estimator(estimator), check_tau(tau), check_seed(seed)
    g, index, has = _draw(scores, valid, seed, ids)
    nk = scores.shape[-1]
    if nk == 0:
        onehot = torch.zeros_like(scores, memory_format=torch.contiguous_format)
        log_prob = scores.sum(-1)  # zeros, attached
    else:
        at = index.clamp_min(0).unsqueeze(-1)
        onehot = torch.zeros_like(scores, memory_format=torch.contiguous_format).detach().scatter_(-1, at, 1.0)
        onehot = onehot * has.unsqueeze(-1)
        s = scores.masked_fill(~valid, float("-inf"))
        s = torch.where(has.unsqueeze(-1), s, 0.0)  # empty rows: finite, so that the backward has no 0 * inf
        log_prob = torch.where(has, s.gather(-1, at).squeeze(-1) - torch.logsumexp(s, -1), 0.0)
    if estimator == "reinforce":
        return onehot, index, log_prob
    y = scores if nk == 0 else masked_softmax((scores + g.to(scores.dtype)) / tau, valid)
    return straight_through(onehot, y), index, log_prob


class ReinforceBaseline(nn.Module):
    """REINFORCE surrogate loss with a moving-average reward baseline ``b`` (a buffer, starts at 0).

    Convention: ``reward`` is to be MAXIMISED. Minimising the returned loss
    ``L = -(1/B) sum_n sum_rest (r_n - b) log_prob_{n, rest}`` follows
    ``dL/dtheta = -(1/B) sum_n (r_n - b) grad log p_n``, whose expectation is ``-grad E[r]`` for any ``b``
    not depending on this batch's draws (the old ``b`` is used; no gradient flows through ``b`` or ``reward``).
    Then ``b <- decay b + (1 - decay) mean(reward)``.
    """

    def __init__(self, decay: float = 0.9):
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise ValueError(f"decay: expected a number in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("baseline", torch.zeros((), dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"decay={self.decay}, baseline={float(self.baseline):.4g}"

    def surrogate(self, log_prob: Tensor, reward: Tensor, *, update: bool = True) -> Tensor:
        """Scalar surrogate loss (see the class); ``update=False`` leaves ``b`` as it is.

        ``log_prob (B, ...)``: the draws' log-probabilities (e.g. ``(B, Nq)`` or ``(B, H, Nq)``), summed over
        all but the first dim; ``reward``: its leading shape (``(B,)``: one reward crediting every draw of
        example ``n``, the unbiased default; a longer shape credits the draws below each entry).
        For a reward with a pathwise part (Xu et al.: ``r = log p(y | draws)``) the full loss is
        ``-r.mean() + surrogate(log_prob, r)``.
        """
        if not isinstance(log_prob, Tensor) or not log_prob.dtype.is_floating_point or log_prob.dim() < 1:
            raise TypeError("log_prob: expected a floating-point tensor of shape (B, ...), got "
                            f"{getattr(log_prob, 'shape', type(log_prob).__name__)}")
        if not isinstance(reward, Tensor) or not reward.dtype.is_floating_point:
            got = reward.dtype if isinstance(reward, Tensor) else type(reward).__name__
            raise TypeError(f"reward: expected a floating-point tensor, got {got}")
        if reward.dim() < 1 or tuple(reward.shape) != tuple(log_prob.shape[:reward.dim()]):
            raise ValueError(f"reward: shape {tuple(reward.shape)} must be a leading part of log_prob's "
                             f"{tuple(log_prob.shape)} (e.g. ({log_prob.shape[0]},))")
        r = reward.detach().to(log_prob.dtype)
        b = self.baseline.detach().to(device=log_prob.device, dtype=log_prob.dtype)
        adv = (r - b).reshape(*r.shape, *(1,) * (log_prob.dim() - r.dim()))
        loss = -(adv * log_prob).sum() / max(log_prob.shape[0], 1)
        if update and reward.numel():
            with torch.no_grad():
                mean = reward.detach().to(device=self.baseline.device, dtype=self.baseline.dtype).mean()
                self.baseline.mul_(self.decay).add_((1 - self.decay) * mean)
        return loss

    def forward(self, log_prob: Tensor, reward: Tensor) -> Tensor:
        """:meth:`surrogate` (updating ``b``)."""
        return self.surrogate(log_prob, reward)


class HardSampler(nn.Module):
    """The sampling state of a stochastic hard variant (``create("hard", sample=True, ...)``).

    Each call draws a fresh seed from ``generator`` (a ``torch.Generator``, one seeded with ``seed``, or the
    global RNG when both are None: ``torch.manual_seed`` makes runs reproducible) and then the keys by
    :func:`sampled_weights`. ``reinforce`` keeps the last draws' ``log_prob`` and a :class:`ReinforceBaseline`
    (its ``baseline`` buffer is in the ``state_dict``).
    """

    def __init__(self, estimator: str = "gumbel", tau: float = 1.0, seed: int | None = None,
                 generator: torch.Generator | None = None, baseline_decay: float = 0.9):
        super().__init__()
        self.estimator, self.tau = check_estimator(estimator), check_tau(tau)
        if seed is not None and generator is not None:
            raise ValueError("seed: give seed= or generator=, not both")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        self.generator = torch.Generator().manual_seed(check_seed(seed)) if seed is not None else generator
        self.baseline = ReinforceBaseline(baseline_decay) if self.estimator == "reinforce" else None
        self.log_prob: Tensor | None = None
        self.last_seed: int | None = None

    def extra_repr(self) -> str:
        return f"estimator={self.estimator!r}, tau={self.tau}"

    def next_seed(self) -> int:
        """A fresh seed for one training call (kept as :attr:`last_seed`; the previous draws' ``log_prob`` goes)."""
        self.last_seed, self.log_prob = draw_seed(self.generator), None
        return self.last_seed

    def forward(self, scores: Tensor, valid: Tensor) -> Tensor:
        """The weights of one training call (keeps ``log_prob`` and the seed drawn)."""
        weights, _, self.log_prob = sampled_weights(scores, valid, self.next_seed(), self.estimator, self.tau)
        return weights

    def reinforce_loss(self, reward: Tensor) -> Tensor:
        """:meth:`ReinforceBaseline.surrogate` of the last training call's draws (``reward`` to maximise)."""
        if self.baseline is None:
            raise ValueError(f"reward: reinforce_loss needs estimator='reinforce', this one is {self.estimator!r}")
        if self.log_prob is None:
            raise ValueError("reward: no draws yet; call the module in training mode first")
        return self.baseline.surrogate(self.log_prob, reward)
