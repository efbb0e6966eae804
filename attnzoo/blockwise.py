"""The blockwise backend: any score, without its ``(..., Nq, Nk, D)`` intermediates.

For a score with no fused form (a ``forward(query, key)`` only), the output is computed by an online
softmax / arg-max over key chunks in eager PyTorch, calling the score's own ``forward`` on
(query block, key chunk) pairs: peak memory ``O(block x chunk x D)`` instead of the reference's
``O(Nq x Nk x D)``. The backward recomputes each pair's scores from the saved log-sum-exp (as the
fused kernels do) and back-propagates ``dS`` through the score with ``torch.autograd.grad``: nothing
of size ``Nq x Nk`` is stored. Shapes: query ``(..., Nq, Dq)``, key ``(..., Nk, Dk)``, value
``(..., Nk, Dv)``; which pairs take part comes from the call's :class:`~attnzoo.masks.MaskSpec`, one block at
a time; out ``(..., Nq, Dv)``.

With ``entropy=True`` the same pass also returns the soft weights' entropy ``H_i = -sum_j w_ij log w_ij``
``(..., Nq)`` from the running sum ``t = sum_j exp(s_ij - m_i) (s_ij - m_i)`` beside ``l = sum_j exp(s_ij - m_i)``:
``H_i = log l - t / l`` (relative to the running max ``m_i``: no cancellation for un-centred scores), and its
gradient ``dH_i / ds_ij = -w_ij (s_ij - lse_i + H_i)`` joins ``dS`` in the backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops.reference import acc_dtype

BLOCK = 256  # queries per block and keys per chunk
# backend="auto" runs a score without a fused form blockwise once a broadcast score's intermediate,
# batch x Nq x Nk x max(Dq, Dk) elements, would exceed this many bytes
AUTO_ABOVE_BYTES = 256 * 2**20


def reference_bytes(query: Tensor, key: Tensor) -> int:
    """What a broadcast score's ``(..., Nq, Nk, D)`` intermediate would take on the reference backend."""
    batch = query.shape[:-2].numel()
    return batch * query.shape[-2] * key.shape[-2] * max(query.shape[-1], key.shape[-1]) * query.element_size()


def _blocks(n: int):
    return [(i, min(i + BLOCK, n)) for i in range(0, n, BLOCK)]


def _scores(score, check, q: Tensor, k: Tensor, spec, i0: int, j0: int) -> Tensor:
    """The masked scores (``-inf`` where a pair takes no part) of queries ``i0 ..`` and keys ``j0 ..``."""
    s = score(q, k)
    check(s, q, k)
    s = spec.add_positions(s, i0, j0)
    return s.masked_fill(~spec.block(i0, i0 + q.shape[-2], j0, j0 + k.shape[-2], q.device), float("-inf"))


def differentiable_params(score, spec) -> tuple[Tensor, ...]:
    """What a blockwise backward returns gradients for besides query, key, value: the score's parameters that
    require one, and the call's bias (its gradient flows through each block's slice of it, like a parameter's)."""
    params = tuple(p for p in score.parameters() if p.requires_grad) if hasattr(score, "parameters") else ()
    return (*params, spec.bias) if spec.bias is not None and spec.bias.requires_grad else params


def recomputed_blocks(score, check, spec, query: Tensor, key: Tensor):
    """The backward's recomputation: ``(i0, i1, j0, j1, qb, kb, s)`` for each (query block, key chunk), ``s`` the
    masked scores of ``qb = query[..., i0:i1, :]`` and ``kb = key[..., j0:j1, :]`` with their graph (to the
    blocks, where the inputs need a gradient, and to the score's parameters)."""
    for i0, i1 in _blocks(query.shape[-2]):
        for j0, j1 in _blocks(key.shape[-2]):
            qb = query[..., i0:i1, :].detach().requires_grad_(query.requires_grad)
            kb = key[..., j0:j1, :].detach().requires_grad_(key.requires_grad)
            with torch.enable_grad():
                s = _scores(score, check, qb, kb, spec, i0, j0)
            yield i0, i1, j0, j1, qb, kb, s


def backprop_scores(s: Tensor, ds: Tensor, blocks, params, dparams) -> None:
    """Back-propagate ``ds`` through a block's scores ``s``: ``blocks`` pairs the block inputs with where their
    gradients accumulate (``(qb, dq[...]), (kb, dk[...])``), ``params`` / ``dparams`` the parameters likewise."""
    targets = [(x, d) for x, d in (*blocks, *zip(params, dparams, strict=True)) if x.requires_grad]
    if not targets or not s.requires_grad:
        return
    grads = torch.autograd.grad(s, [x for x, _ in targets], ds.to(s.dtype), allow_unused=True)
    for (_, d), gx in zip(targets, grads, strict=True):
        if gx is not None:
            d += gx


def _forward(score, check, hard: bool, query, key, value, spec, entropy: bool = False):
    acc = acc_dtype(query.dtype)
    batch, nq, dv = query.shape[:-2], query.shape[-2], value.shape[-1]
    outs, lses, args, ents = [], [], [], []
    for i0, i1 in _blocks(nq):
        qb, nb = query[..., i0:i1, :], i1 - i0
        m = query.new_full((*batch, nb), float("-inf"), dtype=acc)
        l = query.new_zeros((*batch, nb), dtype=acc)  # noqa: E741
        t = query.new_zeros((*batch, nb), dtype=acc)  # sum_j exp(s_j - m) (s_j - m)
        o = query.new_zeros((*batch, nb, dv), dtype=acc)
        best = m.clone()
        arg = torch.full((*batch, nb), -1, dtype=torch.long, device=query.device)
        for j0, j1 in _blocks(key.shape[-2]):
            s = _scores(score, check, qb, key[..., j0:j1, :], spec, i0, j0).to(acc)
            bm = s.amax(-1)
            if hard:  # strictly greater: an earlier chunk keeps a tie (first index, as torch.argmax)
                up = bm > best
                best, arg = torch.where(up, bm, best), torch.where(up, s.argmax(-1) + j0, arg)
            mn = torch.maximum(m, bm)
            shift = torch.where(torch.isneginf(mn), 0.0, mn)
            alpha = torch.exp(m - shift)
            z = s - shift.unsqueeze(-1)
            p = torch.exp(z)
            if entropy:  # t relative to the new max: sum exp(s - m_old)(s - m_old + m_old - m_new), rescaled
                moved = torch.where(l == 0, 0.0, m - shift)
                t = alpha * (t + moved * l) + (p * torch.where(p > 0, z, 0.0)).sum(-1)
            l = l * alpha + p.sum(-1)  # noqa: E741
            o = o * alpha.unsqueeze(-1) + p @ value[..., j0:j1, :].to(acc)
            m = mn
        empty = l == 0  # no valid key (a NaN score makes l NaN: the row is NaN)
        lses.append(torch.where(empty, float("-inf"), m + torch.log(l)))
        outs.append(torch.where(empty.unsqueeze(-1), 0.0, o / l.unsqueeze(-1)))
        args.append(torch.where(empty, -1, arg))
        if entropy:
            ents.append(torch.where(empty, 0.0, torch.log(l) - t / l))
    return torch.cat(outs, -2), torch.cat(lses, -1), torch.cat(args, -1), (torch.cat(ents, -1) if entropy else None)


class _Blockwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, score, check, hard, entropy, spec, query, key, value, *params):
        with torch.no_grad():
            soft_out, lse, argmax, ent = _forward(score, check, hard, query, key, value, spec, entropy)
        ctx.score, ctx.check, ctx.hard, ctx.spec, ctx.n_params = score, check, hard, spec, len(params)
        ctx.entropy = entropy
        ctx.save_for_backward(query, key, value, soft_out, lse, argmax, ent, *params)
        if hard:
            picked = value.gather(-2, argmax.clamp_min(0).unsqueeze(-1).expand(*argmax.shape, value.shape[-1]))
            out = torch.where((argmax >= 0).unsqueeze(-1), picked, 0.0)
            out = torch.where(soft_out.isnan(), soft_out, out.to(soft_out.dtype)).to(value.dtype)
        else:
            out = soft_out.to(value.dtype)
        return (out, ent.to(value.dtype)) if entropy else out

    @staticmethod
    def backward(ctx, grad_out, grad_ent=None):
        if torch.is_grad_enabled():  # create_graph=True: an error, never a silently missing second-order term
            raise NotImplementedError("attnzoo: second derivatives through the blockwise backend are not "
                                      "implemented; use backend='reference' for double backward")
        query, key, value, soft_out, lse, argmax, ent, *params = ctx.saved_tensors
        acc = lse.dtype
        g = grad_out.to(acc)
        delta = (g * soft_out).sum(-1)  # D_i = dO_i . o_i, o the softmax output (straight-through for hard)
        gh = None
        if ctx.entropy and grad_ent is not None:  # dS += -gH w (s - lse + H): the per-row part folds into D
            gh = grad_ent.to(acc)
            delta = delta + gh * ent
        lse_safe = torch.where(torch.isneginf(lse), 0.0, lse)
        dq, dk = torch.zeros_like(query, dtype=acc), torch.zeros_like(key, dtype=acc)
        dv = torch.zeros_like(value, dtype=acc)
        dparams = [torch.zeros_like(p) for p in params]
        for i0, i1, j0, j1, qb, kb, s in recomputed_blocks(ctx.score, ctx.check, ctx.spec, query, key):
            gb = g[..., i0:i1, :]
            z = s.detach().to(acc) - lse_safe[..., i0:i1].unsqueeze(-1)
            p = torch.exp(z)  # 0 at masked keys; NaN rows stay NaN
            vc = value[..., j0:j1, :].to(acc)
            if ctx.hard:
                am = argmax[..., i0:i1]
                hit = (am.unsqueeze(-1) == torch.arange(j0, j1, device=am.device)).to(acc)
                dv[..., j0:j1, :] += hit.transpose(-1, -2) @ gb
            else:
                dv[..., j0:j1, :] += p.transpose(-1, -2) @ gb
            dp = gb @ vc.transpose(-1, -2) - delta[..., i0:i1].unsqueeze(-1)
            if gh is not None:
                dp = dp - gh[..., i0:i1].unsqueeze(-1) * torch.where(p > 0, z, 0.0)
            backprop_scores(s, p * dp, ((qb, dq[..., i0:i1, :]), (kb, dk[..., j0:j1, :])), params, dparams)
        return (None, None, None, None, None, dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype), *dparams)


def attend(score, check, pooling: str, query: Tensor, key: Tensor, value: Tensor, spec, entropy: bool = False):
    """Pool the score's weights over the keys ``spec`` lets take part, blockwise (``pooling``: soft or hard);
    returns out, and with ``entropy`` (soft only) ``(out, H)``.

    ``check(scores, query_block, key_block)`` validates what the score returns for each pair; ``spec``
    (a :class:`~attnzoo.masks.MaskSpec`) gives each block's mask and adds its positional terms (bias, ALiBi)."""
    if entropy and pooling != "soft":
        raise ValueError(f"entropy: the blockwise pass computes the soft weights' entropy, got pooling={pooling!r}")
    params = differentiable_params(score, spec)
    return _Blockwise.apply(score, check, pooling == "hard", entropy, spec, query, key, value, *params)
