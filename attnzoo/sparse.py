"""Sparse poolings: sparsemax (alpha = 2, Martins & Astudillo 2016) and 1.5-entmax (Peters et al. 2019).

Over the valid keys of a row, with ``z_j = (alpha - 1) (s_j - max_l s_l)`` and ``p = 1 / (alpha - 1)``::

    w_j = [z_j - tau]_+^p,   tau the threshold with  sum_j w_j = 1

so ``w_j = [s_j - m - tau]_+`` (sparsemax) and ``w_j = [(s_j - m) / 2 - tau]_+^2`` (entmax15). Keys with
``z_j <= tau`` get weight exactly 0; masked keys and -inf scores take no part; a row with no valid key gets
all-zero weights and zero gradients; a NaN (or +inf) score makes its row NaN, like torch's softmax. The max
is subtracted first (both poolings are shift-invariant), so that scores near 1e3 keep their precision.

The Jacobian-vector products (``u = w^(2 - alpha)`` on the support ``S = {w > 0}``: ``1`` for sparsemax,
``sqrt(w)`` for entmax15)::

    ds_j = u_j (g_j - sum_l u_l g_l / sum_l u_l)

* :func:`sparsemax`, :func:`entmax15`: dense weights ``(..., Nk)`` from scores ``(..., Nk)``.
* :func:`sparse_attend`: ``out_i = sum_j w_ij v_j`` blockwise (the calling convention of
  :func:`attnzoo.blockwise.attend`), never holding a ``Nq x Nk`` tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .blockwise import _blocks, _scores, backprop_scores, differentiable_params, recomputed_blocks
from .ops.reference import acc_dtype

ALPHAS = {"sparsemax": 2.0, "entmax15": 1.5}  # the pooling names and their alpha
TOP = 32  # scores per row kept by the blockwise first pass: a support inside them needs no bracketing
CANDIDATES = 126  # thresholds tried at once by each blockwise bracketing pass (the bracket shrinks 127x a pass)
MAX_BRACKET_PASSES = 64  # a safety bound, never reached: 127x a pass, a float64 bracket stops shrinking within 8


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or alpha not in (1.5, 2.0):
        raise ValueError(f"alpha: got {alpha!r}, expected 1.5 (entmax15) or 2.0 (sparsemax)")
    return float(alpha)


def _closed_form(n: Tensor, y1: Tensor, y2: Tensor, alpha: float) -> Tensor:
    """``t`` with ``sum_{j in S} (y_j - t)^p = 1`` from the moments of ``y`` over a support ``S`` of ``n`` keys:
    ``y1 = sum y``, ``y2 = sum y^2`` (entmax15 only). Sparsemax: ``t = (y1 - 1) / n``; entmax15: the smaller
    root of ``n t^2 - 2 y1 t + y2 - 1 = 0``, as ``(y2 - 1) / (y1 + sqrt(D))``: no cancellation when ``t`` is
    small (``y`` measured from a threshold near the root). 0 where ``n = 0``."""
    n1 = n.clamp_min(1)
    if alpha == 2.0:
        t = (y1 - 1) / n1
    else:
        c0 = y2 - 1
        root = torch.sqrt((y1 * y1 - n1 * c0).clamp_min(0))
        t = torch.where(y1 > 0, c0 / torch.where(y1 > 0, y1 + root, 1.0), (y1 - root) / n1)
    return torch.where(n > 0, t, 0.0)


def _threshold(z: Tensor, alpha: float) -> Tensor:
    """``tau (..., 1)`` of rows ``z (..., N)`` (max 0; -inf: no part), 0 for a row of -inf only.

    The sort-based exact algorithm: sorted ``z_(1) >= z_(2) >= ..``, the support is the longest prefix
    ``k`` whose own threshold ``tau_k`` lies below ``z_(k)`` (sparsemax: ``tau_k = (sum_{l<=k} z_(l) - 1) / k``;
    entmax15: ``tau_k = mean_k - sqrt((1 - ss_k) / k)``, ``ss_k`` the prefix's sum of squared deviations).
    The prefix moments cancel for entmax15, so ``tau`` is then recomputed on the support from the moments of
    ``z - tau_K`` (:func:`_closed_form`)."""
    n = z.shape[-1]
    zs = z.sort(-1, descending=True).values
    fin = zs > float("-inf")
    zf = torch.where(fin, zs, 0.0)
    k = torch.arange(1, n + 1, dtype=z.dtype, device=z.device)
    cs = zf.cumsum(-1)
    if alpha == 2.0:
        tau_k = (cs - 1) / k
    else:
        mean = cs / k
        ss = (zf * zf).cumsum(-1) - cs * mean
        tau_k = mean - torch.sqrt(((1 - ss) / k).clamp_min(0))
    size = (fin & (tau_k <= zs)).sum(-1, keepdim=True)
    ref = tau_k.gather(-1, (size - 1).clamp_min(0))
    y = torch.where(k <= size, zs - ref, 0.0)
    t = _closed_form(size.to(z.dtype), y.sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True), alpha)
    return torch.where(size > 0, ref + t, 0.0)


def _weights_and_u(d: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """From ``d = [z - tau]_+``: weights ``w = d^p`` and the backward's ``u = w^(2 - alpha)`` (NaN stays NaN)."""
    if alpha == 2.0:
        return d, torch.where(d > 0, 1.0, d)
    return d * d, d


class _SparseWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, valid: Tensor, alpha: float):
        ct = acc_dtype(scores.dtype)
        ctx.alpha, ctx.dtype = alpha, scores.dtype
        if scores.shape[-1] == 0:
            w = scores.detach().to(ct)
        else:
            s = scores.detach().to(ct).masked_fill(~valid, float("-inf"))
            m = s.amax(-1, keepdim=True)
            m = torch.where(m == float("-inf"), 0.0, m)  # no valid key: all weights 0
            bad = ~torch.isfinite(m)  # a NaN or +inf score: the row is NaN
            z = (alpha - 1) * (s - m)
            tau = _threshold(z.masked_fill(bad, float("-inf")), alpha)
            w = _weights_and_u((z - tau).clamp_min(0), alpha)[0]
            w = w.masked_fill(bad, float("nan"))
        ctx.save_for_backward(w)
        return w.to(scores.dtype)

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        g = grad.to(w.dtype)
        u = _weights_and_u(w, 2.0)[1] if ctx.alpha == 2.0 else torch.sqrt(w)
        su = u.sum(-1, keepdim=True)
        ds = u * (g - (u * g).sum(-1, keepdim=True) / torch.where(su == 0, 1.0, su))
        return ds.to(ctx.dtype), None, None


def _sparse_pool(scores: Tensor, valid: Tensor, alpha: float) -> Tensor:
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores: expected a floating-point tensor, got {getattr(scores, 'dtype', type(scores))}")
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        raise TypeError(f"valid: expected a bool tensor (True = the key takes part), got "
                        f"{getattr(valid, 'dtype', type(valid).__name__)}")
    try:
        valid = torch.broadcast_to(valid, scores.shape)
    except RuntimeError:
        raise ValueError(f"valid: shape {tuple(valid.shape)} does not broadcast to the scores' "
                         f"{tuple(scores.shape)}") from None
    return _SparseWeights.apply(scores, valid, alpha)


def sparsemax(scores: Tensor, valid: Tensor) -> Tensor:
    """Sparsemax weights ``(..., Nk)`` over the keys where ``valid`` (bool, broadcastable to ``scores``):
    ``w_j = [s_j - m - tau]_+``, ``sum_j w_j = 1``, ``m`` the row's max valid score. Computed in float64 for
    float64 scores, else in float32, and returned in the scores' dtype."""
    return _sparse_pool(scores, valid, 2.0)


def entmax15(scores: Tensor, valid: Tensor) -> Tensor:
    """1.5-entmax weights ``(..., Nk)`` over the keys where ``valid`` (bool, broadcastable to ``scores``):
    ``w_j = [(s_j - m) / 2 - tau]_+^2``, ``sum_j w_j = 1``, ``m`` the row's max valid score. Computed in
    float64 for float64 scores, else in float32, and returned in the scores' dtype."""
    return _sparse_pool(scores, valid, 1.5)


# --- blockwise -----------------------------------------------------------------------------------------------


def _z(s: Tensor, m: Tensor, alpha: float) -> Tensor:
    z = s - m.unsqueeze(-1)
    return z if alpha == 2.0 else z.mul_(alpha - 1)


def _suffix_sum(x: Tensor) -> Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


def _bracket_pass(chunk_z, lo: Tensor, hi: Tensor, alpha: float):
    """One pass over the key chunks evaluating ``f(b) = sum_j [z_j - b]_+^p - 1`` at ``CANDIDATES + 2``
    thresholds ``b_c = lo + c (hi - lo) / (C + 1)``, ``c = 0 .. C + 1``, at once (``chunk_z()`` yields each
    chunk's ``z (..., bq, bk)``; ``lo``, ``hi`` are ``(..., bq)``).

    Each key goes to its bin ``(b_c, b_{c+1}]`` (above ``hi``: the last, ``b_{C+2} = inf``; at most ``lo``: none),
    which sums its count ``n_c``, ``y = z - b_c``, ``y^2`` and keeps the least and largest ``z``. The moments of each
    support ``{z > b_c}`` then follow as suffix sums of non-negative terms (no cancellation; ``g = b_{c+1} - b_c``):
    ``N_c = sum_{d>=c} n_d``, ``P1_c = Y1_c + P1_{c+1} + g N_{c+1}``, ``P2_c = Y2_c + P2_{c+1} + g (2 P1_{c+1} + g
    N_{c+1})``, and ``f(b_c) = P1_c - 1`` (sparsemax) or ``P2_c - 1``. With ``c`` the last threshold where
    ``f > 0``, returns the new bracket: ``[b_c, b_{c+1}]`` narrowed by the tangents at both ends (lower bounds)
    and the secant (an upper bound), ``f`` being convex; the threshold; and whether it is exact: the closed form
    of a support that its bin's least and largest ``z`` prove right (the bin holds at most two keys, or it
    splits into all or none of them)."""
    c_num = CANDIDATES
    frac = torch.arange(c_num + 2, dtype=lo.dtype, device=lo.device) / (c_num + 1)
    b = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * frac
    b = torch.cat([b[..., :-1], hi.unsqueeze(-1)], -1)  # (..., bq, C + 2), non-decreasing
    ref = torch.cat([lo.unsqueeze(-1), b], -1)  # each bin's reference: bin 0 (z <= lo, dropped) gets lo
    scale = ((c_num + 1) / (hi - lo).clamp_min(torch.finfo(lo.dtype).tiny)).unsqueeze(-1)
    shape = (*b.shape[:-1], c_num + 3)
    cnt, y1, y2 = b.new_zeros(shape), b.new_zeros(shape), b.new_zeros(shape)
    zmin, zmax = b.new_full(shape, float("inf")), b.new_full(shape, float("-inf"))
    ones = None
    for z in chunk_z():
        # the bin, ceil((z - lo) / (hi - lo) (C + 1)): rounding may put a z within an ulp of a b_c in the bin
        # beside, which moves f by as much (the grid's own rounding)
        x = ((z - lo.unsqueeze(-1)) * scale).nan_to_num_(0.0, c_num + 2, 0.0).clamp_(0, c_num + 2)
        idx = x.ceil_().long()
        y = z - ref.gather(-1, idx)
        ones = torch.ones_like(y) if ones is None or ones.shape != y.shape else ones
        cnt.scatter_add_(-1, idx, ones)
        y1.scatter_add_(-1, idx, y)
        if alpha != 2.0:
            y2.scatter_add_(-1, idx, y * y)
        zmin.scatter_reduce_(-1, idx, z, "amin")
        zmax.scatter_reduce_(-1, idx, z, "amax")
    cnt, y1, y2, zmin, zmax = (x[..., 1:] for x in (cnt, y1, y2, zmin, zmax))  # bin c: (b_c, b_{c+1}]
    zero = b.new_zeros((*b.shape[:-1], 1))
    gap = torch.cat([b[..., 1:] - b[..., :-1], zero], -1)  # b_{c+1} - b_c, 0 for the last
    nxt = lambda x: torch.cat([x[..., 1:], zero], -1)  # x_{c+1}, 0 past the end
    n_c = _suffix_sum(cnt)
    p1 = _suffix_sum(y1 + gap * nxt(n_c))  # sum_{z > b_c} (z - b_c)
    p2 = _suffix_sum(y2 + gap * (2 * nxt(p1) + gap * nxt(n_c))) if alpha != 2.0 else p1
    least = zmin.flip(-1).cummin(-1).values.flip(-1)  # min_{z > b_c} z
    f = (p1 if alpha == 2.0 else p2) - 1
    slope = n_c if alpha == 2.0 else 2 * p1  # -f'(b_c), from the right
    c = ((f > 0).sum(-1, keepdim=True) - 1).clamp(0, c_num)
    at, after = (lambda x: x.gather(-1, c).squeeze(-1)), (lambda x: x.gather(-1, c + 1).squeeze(-1))
    lo_c, hi_c, f_lo, f_hi = at(b), after(b), at(f), after(f)
    safe = lambda d: torch.where(d > 0, d, 1.0)
    new_lo = torch.maximum(lo_c, torch.where(at(slope) > 0, lo_c + f_lo.clamp_min(0) / safe(at(slope)), lo_c))
    new_lo = torch.maximum(new_lo, torch.where(after(slope) > 0, hi_c + f_hi / safe(after(slope)), lo_c))
    new_hi = torch.where(f_lo > f_hi, lo_c + f_lo.clamp_min(0) * ((hi_c - lo_c) / safe(f_lo - f_hi)), hi_c)
    new_hi = torch.minimum(hi_c, new_hi)
    new_lo = torch.minimum(new_lo, new_hi)
    # the support is {z > b_{c+1}} plus the top keys of the bin (b_c, b_{c+1}] holding tau: all of them (A), none
    # (B), or, of two, the larger (C); each closed form is the row's threshold if it splits that bin so
    tau_a = lo_c + _closed_form(at(n_c), at(p1), at(p2), alpha)
    tau_b = hi_c + _closed_form(after(n_c), after(p1), after(p2), alpha)
    top, second, k = at(zmax), at(zmin), at(cnt)
    e = torch.where(k == 2, top - hi_c, 0.0)  # <= 0
    tau_c = hi_c + _closed_form(after(n_c) + 1, after(p1) + e, after(p2) + e * e, alpha)
    ok_a, ok_b = tau_a < at(least), (tau_b >= top) & (tau_b < after(least))
    ok_c = (k == 2) & (tau_c >= second) & (tau_c < top) & (tau_c < after(least))
    tau = torch.where(ok_a, tau_a, torch.where(ok_b, tau_b, torch.where(ok_c, tau_c, tau_a)))
    return new_lo, new_hi, torch.minimum(torch.maximum(tau, lo_c), hi_c), ok_a | ok_b | ok_c


def _block_threshold(chunk_s, alpha: float, shape, acc, device):
    """Row max ``m`` and threshold ``tau`` of a query block's rows (``chunk_s()`` yields each chunk's scores,
    -inf at invalid keys, in ``acc``); also the number of bracketing passes made.

    Pass 1: ``m``, the number ``n`` of valid keys and the ``TOP`` largest scores; the sort-based threshold of
    these is the row's when the row's other keys lie below it. Else ``tau`` lies in ``[tau_TOP, min(z_(TOP),
    -(1/n)^(alpha-1))]`` (``TOP = 0``: in ``[-1, -(1/n)^(alpha-1)]``, as ``max z = 0``), narrowed by
    :func:`_bracket_pass` until the support is known (or the bracket stops shrinking)."""
    m = torch.full(shape, float("-inf"), dtype=acc, device=device)
    n = torch.zeros(shape, dtype=acc, device=device)
    top = None
    for s in chunk_s():
        m = torch.maximum(m, s.amax(-1))
        n += (s > float("-inf")).sum(-1)
        if TOP:
            cand = s if top is None else torch.cat([top, s], -1)
            top = cand.topk(min(TOP, cand.shape[-1]), -1).values
    m = torch.where(m == float("-inf"), 0.0, m)  # no valid key (NaN / +inf stay: the row is NaN)
    bad = ~torch.isfinite(m)
    hi = -n.clamp_min(1) ** (1 - alpha)
    if TOP and top is not None:
        done = bad | (n <= TOP)
        z_top = _z(top, m, alpha).masked_fill(bad.unsqueeze(-1), float("-inf"))
        tau = _threshold(z_top, alpha).squeeze(-1)
        last = z_top[..., -1]
        done |= last <= tau
        hi = torch.minimum(last, hi)
        lo = torch.minimum(tau, hi)
    else:
        lo = torch.full_like(hi, -1.0)
        done = bad | (n <= 1)
        tau = torch.where(n == 1, -1.0, 0.0)
    lo, hi = lo.masked_fill(done, 0.0), hi.masked_fill(done, 0.0)
    passes = 0
    while not bool(done.all()) and passes < MAX_BRACKET_PASSES:
        passes += 1
        chunk_z = lambda: (_z(s, m, alpha) for s in chunk_s())  # (a settled row's bins go unread)
        new_lo, new_hi, new_tau, exact = _bracket_pass(chunk_z, lo, hi, alpha)
        settled = ~done & (exact | ((new_lo == lo) & (new_hi == hi)))
        tau = torch.where(settled, new_tau, tau)
        done = done | settled
        lo, hi = torch.where(done, lo, new_lo), torch.where(done, hi, new_hi)
    if not bool(done.all()):  # only past MAX_BRACKET_PASSES: the bracket's best closed form
        tau = torch.where(done, tau, new_tau)
    return m, torch.where(bad, 0.0, tau), passes


def _forward(score, check, alpha: float, query, key, value, spec, for_backward: bool = True):
    """Blockwise forward: ``out (..., Nq, Dv)``, per-row ``m``, ``tau`` ``(..., Nq)`` and, for the backward (else
    zeros), ``ou = sum_j u_ij v_j (..., Nq, Dv)``, ``su = sum_j u_ij (..., Nq)``; and the number of bracketing
    passes of each query block."""
    acc = acc_dtype(query.dtype)
    batch, nq, dv = query.shape[:-2], query.shape[-2], value.shape[-1]
    outs, ms, taus, ous, sus, passes = [], [], [], [], [], []
    for i0, i1 in _blocks(nq):
        qb = query[..., i0:i1, :]

        def chunk_s(qb=qb, i0=i0):
            for j0, j1 in _blocks(key.shape[-2]):
                yield j0, _scores(score, check, qb, key[..., j0:j1, :], spec, i0, j0).to(acc)

        m, tau, p = _block_threshold(lambda: (s for _, s in chunk_s()), alpha, (*batch, i1 - i0), acc, query.device)
        o = query.new_zeros((*batch, i1 - i0, dv), dtype=acc)
        ou, su = torch.zeros_like(o), m.new_zeros(m.shape)
        for j0, s in chunk_s():
            w, u = _weights_and_u((_z(s, m, alpha) - tau.unsqueeze(-1)).clamp_min(0), alpha)
            vc = value[..., j0:j0 + s.shape[-1], :].to(acc)
            o = o + w @ vc
            if for_backward:
                ou, su = ou + u @ vc, su + u.sum(-1)
        outs.append(o.masked_fill(~torch.isfinite(m).unsqueeze(-1), float("nan")))
        ms.append(m), taus.append(tau), ous.append(ou), sus.append(su), passes.append(p)
    if not outs:  # Nq = 0
        o = query.new_zeros((*batch, 0, dv), dtype=acc)
        return o, o[..., 0], o[..., 0], o, o[..., 0], passes
    cat = lambda xs: torch.cat(xs, -1)
    return torch.cat(outs, -2), cat(ms), cat(taus), torch.cat(ous, -2), cat(sus), passes


class _SparseBlockwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, score, check, alpha, spec, query, key, value, *params):
        with torch.no_grad():
            out, m, tau, ou, su, _ = _forward(score, check, alpha, query, key, value, spec, any(ctx.needs_input_grad))
        ctx.score, ctx.check, ctx.alpha, ctx.spec = score, check, alpha, spec
        ctx.save_for_backward(query, key, value, m, tau, ou, su, *params)
        return out.to(value.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: an error, never a silently missing second-order term
            raise NotImplementedError("attnzoo: second derivatives through the blockwise sparse poolings are not "
                                      "implemented; use the dense sparsemax / entmax15 for double backward")
        query, key, value, m, tau, ou, su, *params = ctx.saved_tensors
        alpha, acc = ctx.alpha, m.dtype
        g = grad_out.to(acc)
        delta = (g * ou).sum(-1) / torch.where(su == 0, 1.0, su)  # sum_j u_ij g_i.v_j / sum_j u_ij
        dq, dk = torch.zeros_like(query, dtype=acc), torch.zeros_like(key, dtype=acc)
        dv = torch.zeros_like(value, dtype=acc)
        dparams = [torch.zeros_like(p) for p in params]
        for i0, i1, j0, j1, qb, kb, s in recomputed_blocks(ctx.score, ctx.check, ctx.spec, query, key):
            gb = g[..., i0:i1, :]
            d = (_z(s.detach().to(acc), m[..., i0:i1], alpha) - tau[..., i0:i1].unsqueeze(-1)).clamp_min(0)
            w, u = _weights_and_u(d, alpha)
            vc = value[..., j0:j1, :].to(acc)
            dv[..., j0:j1, :] += w.transpose(-1, -2) @ gb
            ds = u * (gb @ vc.transpose(-1, -2) - delta[..., i0:i1].unsqueeze(-1))
            backprop_scores(s, ds, ((qb, dq[..., i0:i1, :]), (kb, dk[..., j0:j1, :])), params, dparams)
        return (None, None, None, None, dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype), *dparams)


def sparse_attend(score, check, alpha: float, query: Tensor, key: Tensor, value: Tensor, spec) -> Tensor:
    """``out_i = sum_j w_ij v_j`` with sparsemax (``alpha=2.0``) or entmax15 (``alpha=1.5``) weights over the
    keys ``spec`` (a :class:`~attnzoo.masks.MaskSpec`) lets take part, blockwise: query ``(..., Nq, Dq)``, key
    ``(..., Nk, Dk)``, value ``(..., Nk, Dv)``; out ``(..., Nq, Dv)``. ``score``, ``check`` and ``spec`` as for
    :func:`attnzoo.blockwise.attend` (``spec`` builds each block's mask and adds the positional terms).

    Passes over the key chunks, per block of 256 queries (each recomputes the block's scores):

    1. the row max ``m``, the number ``n`` of valid keys and the ``TOP`` largest scores; a row whose support lies
       among these gets its exact threshold from them (sort-based);
    2. only while a row of the block is unsettled: bracketing passes (:func:`_bracket_pass`), each evaluating
       ``f(tau) = sum_j [z_j - tau]_+^p - 1`` at ``CANDIDATES + 2`` thresholds at once and ending with the exact
       closed-form threshold of every row whose support it pins down (0 passes for rows as sharp as a top-32
       support, typically 1 or 2 for flat rows);
    3. the output, ``sum_j w_ij v_j``, and for the backward ``sum_j u_ij v_j``, ``sum_j u_ij``.

    The backward is one more pass, recomputing each block pair's scores with the saved ``m`` and ``tau``:
    ``dv_j = sum_i w_ij g_i``, ``ds_ij = u_ij (g_i . v_j - g_i . (sum_l u_il v_l) / sum_l u_il)`` back through the
    score (and the bias of ``spec``) with ``torch.autograd.grad``. Nothing ``Nq x Nk`` is stored; double backward
    raises NotImplementedError."""
    alpha = _check_alpha(alpha)
    params = differentiable_params(score, spec)
    return _SparseBlockwise.apply(score, check, alpha, spec, query, key, value, *params)
