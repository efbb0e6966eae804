"""Eager, materialising implementations of the ``attnzoo`` ops.

They define the ops' semantics (see :mod:`attnzoo.ops.schemas`), back the ops
when the extension is not built, and are the oracle the compiled kernels are
tested against. They build the full ``(B, Nq, Nk)`` score matrix on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import MaskSpec, alibi_term
from .schemas import POOLINGS, PROFILES, TERMS

SOFT, HARD, AVERAGE = POOLINGS["soft"], POOLINGS["hard"], POOLINGS["average"]
TANH, ABS_DIFF, SQ_DIFF = TERMS["tanh"], TERMS["abs_diff"], TERMS["sq_diff"]
IDENTITY, BOXCAR, EPANECHNIKOV = PROFILES["identity"], PROFILES["boxcar"], PROFILES["epanechnikov"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def valid_matrix(B, Nq, Nk, device, valid_lens, mask, causal, window, q_offset=0) -> Tensor:
    """Bool ``(B, Nq, Nk)``: which (query, key) pairs take part (the ops' ``window < 0``: no window)."""
    window = None if window < 0 else window
    return MaskSpec((B,), Nq, Nk, valid_lens, mask, causal, window, q_offset=q_offset).dense(device)


def _ungroup(B: int, *keyside):
    """Grouped keys (batch ``Bk`` dividing ``B``) repeated to batch ``B``: query batch ``b`` reads ``b // (B / Bk)``."""
    return tuple(t if t is None or t.shape[0] == B else t.repeat_interleave(B // t.shape[0], 0) for t in keyside)


def _regroup(grad: Tensor, like: Tensor) -> Tensor:
    """A key-side gradient of batch ``B`` summed over each group back to ``like``'s batch ``Bk``."""
    if grad.shape[0] == like.shape[0] or grad.numel() == 0:
        return grad
    return grad.reshape(like.shape[0], -1, *grad.shape[1:]).sum(1)


def _as_4d(bias: Tensor) -> Tensor:
    """The ops' bias (B1, B2, Nq, Nk), given 3-D as (B, Nq, Nk)."""
    return bias.unsqueeze(1) if bias.dim() == 3 else bias


def _inner(bias4: Tensor, B: int) -> int:
    """B2 of a 4-D bias over a batch of B (the ops' convention, schemas.py)."""
    if bias4.shape[1] > 1:
        return bias4.shape[1]
    return B // bias4.shape[0] if bias4.shape[0] > 1 else 1


def add_positions(s: Tensor, bias, alibi, q_offset: int = 0) -> Tensor:
    """``(s + bias) - alibi_b |i + q_offset - j|`` for scores ``s`` (B, Nq, Nk) and the ops' ``bias`` / ``alibi``."""
    B, Nq, Nk = s.shape
    if bias is not None:
        b4 = _as_4d(bias)
        B2 = _inner(b4, B)
        s = s + b4.to(s.dtype).expand(B // B2 if B2 else 0, B2, Nq, Nk).reshape(B, Nq, Nk)
    if alibi is not None:
        i = torch.arange(Nq, device=s.device).view(Nq, 1) + q_offset
        j = torch.arange(Nk, device=s.device).view(1, Nk)
        s = s + alibi_term(alibi.view(B, 1, 1), i, j, s.dtype)
    return s


def _dbias(ds: Tensor, bias, bias_grad: bool, like: Tensor) -> Tensor:
    """The ops' ``dbias``: ``ds`` summed over the bias's size-1 dims, in its shape and dtype (else empty)."""
    if bias is None or not bias_grad:
        return like.new_empty(0)
    b4 = _as_4d(bias)
    B, Nq, Nk = ds.shape
    B2 = _inner(b4, B)
    full = ds.reshape(B // B2 if B2 else 0, B2, Nq, Nk)
    dims = [d for d in range(4) if b4.shape[d] == 1 and full.shape[d] != 1]
    red = full.sum(dims, keepdim=True) if dims else full
    return red.reshape(bias.shape).to(bias.dtype)


def onehot_at(argmax: Tensor, like: Tensor) -> Tensor:
    """One-hot rows at ``argmax`` (B, Nq), shaped like ``like`` (B, Nq, Nk); rows with -1 stay zero."""
    onehot = torch.zeros_like(like)
    if like.shape[-1]:
        onehot.scatter_(-1, argmax.clamp_min(0).unsqueeze(-1), 1.0)
    return onehot * (argmax >= 0).unsqueeze(-1)


def _pool(s: Tensor, v: Tensor, valid: Tensor, pooling: int, out_dtype):
    """Pool scores ``s`` (B, Nq, Nk) over ``valid`` keys; returns (out, lse, argmax, soft_out, p)."""
    acc = s.dtype
    if pooling == AVERAGE:
        s = torch.zeros_like(s)
    s = s.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = torch.isneginf(lse)  # no valid key, or only -inf scores
    p = torch.exp(s - lse.masked_fill(empty, 0.0).unsqueeze(-1))
    soft_out = (p @ v.to(acc)).to(out_dtype)
    empty_t = s.new_empty(0, dtype=torch.int64)
    if pooling != HARD:
        return soft_out, lse, empty_t, s.new_empty(0, dtype=out_dtype), p
    argmax = torch.where(empty, -1, s.argmax(-1)) if s.shape[-1] else torch.full_like(lse, -1, dtype=torch.int64)
    out = (onehot_at(argmax, p) @ v.to(acc)).to(out_dtype)
    return out, lse, argmax, soft_out, p


def bilinear_scores(q, k, key_bias, scale) -> Tensor:
    """``s_ij = scale * q_i . k_j + key_bias_j`` in the accumulation dtype, (B, Nq, Nk)."""
    acc = acc_dtype(q.dtype)
    s = scale * (q.to(acc) @ k.to(acc).transpose(-1, -2))
    if key_bias is not None:
        s = s + key_bias.to(acc).unsqueeze(-2)
    return s


def elementwise_scores(a, b, w, term, profile):
    """``phi_ijh = phi(a_ih, b_jh)`` (B, Nq, Nk, H), ``r_ij = sum_h w_h phi_ijh`` and ``s = g(r)``, in the
    accumulation dtype. ``phi``: tanh(a + b), |a - b| or (a - b)^2 (from the differences themselves);
    ``g``: identity, boxcar (0 for r <= 1, else -inf) or epanechnikov (log(1 - r) for r < 1, else -inf),
    NaN staying NaN."""
    acc = acc_dtype(a.dtype)
    x, y = a.to(acc).unsqueeze(-2), b.to(acc).unsqueeze(-3)
    if term == TANH:
        phi = torch.tanh(x + y)
    elif term == ABS_DIFF:
        phi = (x - y).abs()
    else:
        phi = (x - y).square()
    r = phi @ w.to(acc)
    if profile == IDENTITY:
        return phi, r, r
    ninf = torch.full_like(r, float("-inf"))
    if profile == BOXCAR:
        s = torch.where(r <= 1, torch.zeros_like(r), ninf)
    else:
        s = torch.where(r < 1, torch.log1p(-r.clamp(max=1.0)), ninf)
    return phi, r, torch.where(r.isnan(), r, s)


def _log_weights(s: Tensor, lse: Tensor, valid: Tensor) -> Tensor:
    """``log p_ij = s_ij - lse_i`` where ``p_ij > 0`` (valid, finite score, row with a key), else 0."""
    live = valid & ~torch.isneginf(s) & ~torch.isneginf(lse).unsqueeze(-1)
    return torch.where(live, s - lse.unsqueeze(-1), 0.0)


def _entropy(s, lse, p, valid, pooling, entropy: bool):
    """The ops' entropy output: ``-sum_j p_ij log p_ij`` (B, Nq) when asked for, else empty."""
    if not entropy:
        return s.new_empty(0)
    if pooling != SOFT:
        raise ValueError(f"entropy: entropy=True needs soft pooling ({SOFT}), got pooling {pooling}")
    return -(p * _log_weights(s, lse, valid)).sum(-1)


def add_noise(s: Tensor, pooling: int, seed, tau: float) -> Tensor:
    """Sampled hard attention's scores ``(s + g(seed, b Nq + i, j)) / tau`` (none without a seed), in float64
    then rounded once (the kernels' order)."""
    if seed is None:
        return s
    if pooling != HARD:
        raise ValueError(f"seed: seed= samples hard attention: pooling must be {HARD}, got {pooling}")
    if not tau > 0:
        raise ValueError(f"tau: expected a number > 0, got {tau}")
    from ..sampling import gumbel_noise, noise_ids

    rows, keys = noise_ids((s.shape[0],), s.shape[1], s.shape[2], device=s.device)
    return ((s.to(torch.float64) + gumbel_noise(seed, rows, keys)) / tau).to(s.dtype)


def bilinear_fwd(q, k, v, key_bias, scale, valid_lens, mask, bias, alibi, pooling, causal, window, entropy=False,
                 seed=None, tau=1.0, q_offset=0):
    B, Nq, Nk = q.shape[0], q.shape[1], k.shape[1]
    k, v, key_bias = _ungroup(B, k, v, key_bias)
    valid = valid_matrix(B, Nq, Nk, q.device, valid_lens, mask, causal, window, q_offset)
    s = add_noise(add_positions(bilinear_scores(q, k, key_bias, scale), bias, alibi, q_offset), pooling, seed, tau)
    out, lse, argmax, soft_out, p = _pool(s, v, valid, pooling, q.dtype)
    return out, lse, argmax, soft_out, _entropy(s, lse, p, valid, pooling, entropy)


def elementwise_fwd(a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling, causal, window, entropy=False,
                    seed=None, tau=1.0, q_offset=0):
    B, Nq, Nk = a.shape[0], a.shape[1], b.shape[1]
    b, v = _ungroup(B, b, v)
    valid = valid_matrix(B, Nq, Nk, a.device, valid_lens, mask, causal, window, q_offset)
    s = add_noise(add_positions(elementwise_scores(a, b, w, term, profile)[2], bias, alibi, q_offset), pooling, seed,
                  tau)
    out, lse, argmax, soft_out, p = _pool(s, v, valid, pooling, a.dtype)
    return out, lse, argmax, soft_out, _entropy(s, lse, p, valid, pooling, entropy)


def _score_grad(grad_out, grad_lse, s, v, valid, pooling, out, argmax, soft_out, grad_entropy=None, entropy=None):
    """Gradients of the pooling: returns (ds (B, Nq, Nk), dv (B, Nk, Dv)) in the accumulation dtype.

    ``p = exp(s - lse)``; ``dv = p^T dO`` (hard: one-hot^T dO);
    ``ds_ij = p_ij (dO_i . v_j - D_i)`` with ``D_i = dO_i . o_i - grad_lse_i``, where
    ``o`` is the soft output (``soft_out`` for hard pooling); average pooling has ``ds = 0``.
    The entropy's gradient ``gH`` adds ``-gH_i p_ij (log p_ij + H_i)``.
    """
    acc = s.dtype
    g = grad_out.to(acc)
    vv = v.to(acc)
    out_for_delta = soft_out if pooling == HARD else out
    _, lse, _, _, p = _pool(s, v, valid, pooling, acc)
    if pooling == HARD:
        dv = onehot_at(argmax, p).transpose(-1, -2) @ g
    else:
        dv = p.transpose(-1, -2) @ g
    if pooling == AVERAGE:
        return torch.zeros_like(s), dv
    delta = (g * out_for_delta.to(acc)).sum(-1)
    if grad_lse is not None:
        delta = delta - grad_lse.to(acc)
    ds = p * (g @ vv.transpose(-1, -2) - delta.unsqueeze(-1))
    if grad_entropy is not None:
        gh = grad_entropy.to(acc).unsqueeze(-1)
        ds = ds - gh * p * (_log_weights(s.masked_fill(~valid, float("-inf")), lse, valid)
                            + entropy.to(acc).unsqueeze(-1))
    return ds, dv


def bilinear_bwd(grad_out, grad_lse, q, k, v, key_bias, scale, valid_lens, mask, bias, alibi, pooling, causal, window,
                 bias_grad, out, lse, argmax, soft_out, grad_entropy=None, saved_entropy=None, seed=None, tau=1.0,
                 q_offset=0):
    B, Nq, Nk = q.shape[0], q.shape[1], k.shape[1]
    k0, v0, kb0 = k, v, key_bias
    k, v, key_bias = _ungroup(B, k, v, key_bias)
    valid = valid_matrix(B, Nq, Nk, q.device, valid_lens, mask, causal, window, q_offset)
    s = add_noise(add_positions(bilinear_scores(q, k, key_bias, scale), bias, alibi, q_offset), pooling, seed, tau)
    ds, dv = _score_grad(grad_out, grad_lse, s, v, valid, pooling, out, argmax, soft_out, grad_entropy, saved_entropy)
    if seed is not None:
        ds = ds / tau
    acc = s.dtype
    dq = scale * (ds @ k.to(acc))
    dk = scale * (ds.transpose(-1, -2) @ q.to(acc))
    dkb = _regroup(ds.sum(-2), kb0).to(key_bias.dtype) if key_bias is not None else q.new_empty(0)
    return (dq.to(q.dtype), _regroup(dk, k0).to(k.dtype), _regroup(dv, v0).to(v.dtype), dkb,
            _dbias(ds, bias, bias_grad, q))


def elementwise_bwd(grad_out, grad_lse, a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling, causal,
                    window, bias_grad, out, lse, argmax, soft_out, grad_entropy=None, saved_entropy=None, seed=None,
                    tau=1.0, q_offset=0):
    B, Nq, Nk = a.shape[0], a.shape[1], b.shape[1]
    b0, v0 = b, v
    b, v = _ungroup(B, b, v)
    valid = valid_matrix(B, Nq, Nk, a.device, valid_lens, mask, causal, window, q_offset)
    phi, r, s = elementwise_scores(a, b, w, term, profile)
    s_pos = add_noise(add_positions(s, bias, alibi, q_offset), pooling, seed, tau)
    ds, dv = _score_grad(grad_out, grad_lse, s_pos, v, valid, pooling, out, argmax, soft_out, grad_entropy,
                         saved_entropy)
    if seed is not None:
        ds = ds / tau
    dbias = _dbias(ds, bias, bias_grad, a)
    acc = s.dtype
    if profile == BOXCAR:  # g' = 0
        ds = torch.zeros_like(ds)
    elif profile == EPANECHNIKOV:  # g'(r) = -1 / (1 - r) inside the support
        ds = torch.where(r < 1, -ds / (1 - r), torch.zeros_like(ds))
    x, y = a.to(acc).unsqueeze(-2), b.to(acc).unsqueeze(-3)
    if term == TANH:
        dphi, sign = 1 - phi * phi, 1.0
    elif term == ABS_DIFF:
        dphi, sign = torch.sign(x - y), -1.0
    else:
        dphi, sign = 2 * (x - y), -1.0
    dpre = ds.unsqueeze(-1) * w.to(acc) * dphi  # d s / d a_ih, (B, Nq, Nk, H)
    da = dpre.sum(-2)
    db = sign * dpre.sum(-3)
    dw = (ds.unsqueeze(-1) * phi).sum((0, 1, 2))
    return da.to(a.dtype), _regroup(db, b0).to(b.dtype), dw.to(w.dtype), _regroup(dv, v0).to(v.dtype), dbias
