"""The built-in scores written from their papers' formulas, independently of ``plugins/``.

Each reads the module's parameters and nothing else of its code: a score that computes
something else than its documented formula (a swapped weight layout, a missing
normalisation, another kernel) disagrees with these. ``reference_for(name, options)`` gives
the :data:`attnzoo.testing.Reference` of a built-in variant for ``check_reference_formula``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POOLINGS = ("soft", "hard", "local", "sparsemax", "entmax15")


def dot(score, q, k):
    return torch.einsum("...id,...jd->...ij", q, k)


def scaled_dot(score, q, k):
    return dot(score, q, k) / math.sqrt(q.shape[-1])


def general(score, q, k):  # Luong: q^T W k
    return torch.einsum("...id,de,...je->...ij", q, score.W, k)


def cosine(score, q, k):
    return F.cosine_similarity(q.unsqueeze(-2), k.unsqueeze(-3), dim=-1, eps=1e-8) / score.temperature


def concat(score, q, k):  # Luong's concat: w^T [q; k], w one Linear over the concatenation, query first
    nq, nk = q.shape[-2], k.shape[-2]
    pairs = torch.cat([q.unsqueeze(-2).expand(*q.shape[:-1], nk, q.shape[-1]),
                       k.unsqueeze(-3).expand(*k.shape[:-2], nq, nk, k.shape[-1])], -1)
    return pairs @ score.w.weight[0]


def additive(score, q, k):  # Bahdanau: v^T tanh(W_q q + W_k k)
    hq = torch.einsum("...id,hd->...ih", q, score.W_q.weight)
    hk = torch.einsum("...jd,hd->...jh", k, score.W_k.weight)
    return torch.tanh(hq.unsqueeze(-2) + hk.unsqueeze(-3)) @ score.w_v.weight[0]


def nadaraya_watson(score, q, k):  # log K(u), u = |q - k| |w|
    u = torch.linalg.vector_norm(q.unsqueeze(-2) - k.unsqueeze(-3), dim=-1) * score.w.abs()
    kernel = score.kernel
    if kernel == "gaussian":
        return -u * u / 2  # log exp(-u^2 / 2)
    if kernel == "boxcar":
        K = (u <= 1).to(u.dtype)
    elif kernel == "epanechnikov":
        K = (1 - u * u).clamp_min(0)
    else:  # constant
        K = torch.ones_like(u)
    return torch.log(K)


SCORES = {f.__name__: f for f in (dot, scaled_dot, general, cosine, concat, additive, nadaraya_watson)}


def _heads(x, lin, num_heads):  # (..., N, E) -> (..., H, N, E / H)
    y = F.linear(x, lin.weight, lin.bias)
    return y.unflatten(-1, (num_heads, -1)).transpose(-2, -3)


def _local_p(formula, D):
    """Luong's local-p: ``s_ij - (j - p_i)^2 / (2 (D/2)^2)`` on ``|j - p_i| <= D`` (-inf elsewhere), with the
    centre ``p_i = Nk sigmoid(v_p^T tanh(W_p q_i))``."""
    def scores(attn, q, k):
        nk = k.shape[-2]
        h = torch.tanh(torch.einsum("...id,hd->...ih", q, attn.W_p.weight))
        p = nk * torch.sigmoid(h @ attn.v_p.weight[0])
        d = torch.arange(nk, dtype=q.dtype) - p.unsqueeze(-1)
        s = formula(attn.score, q, k) - d**2 / (2 * (D / 2) ** 2)
        return s.masked_fill(d.abs() > D, float("-inf"))

    return scores


def _alibi(formula, slopes):
    """Press et al.'s linear bias: ``s_ij - m |i - j|``, ``m`` per head (a tensor broadcast over the batch)."""
    def biased(attn, q, k):
        s = formula(attn, q, k)
        i = torch.arange(s.shape[-2]).view(-1, 1)
        j = torch.arange(s.shape[-1]).view(1, -1)
        return s - torch.as_tensor(slopes, dtype=s.dtype)[..., None, None] * (i - j).abs().to(s.dtype)

    return biased


def reference_for(name: str, options: dict):
    """The reference formula of the built-in variant ``create(name, **options)``."""
    if name == "average":
        return lambda attn, q, k: q.new_zeros(*q.shape[:-1], k.shape[-2])  # scores are not used
    if options.get("predict_center"):
        return _local_p(SCORES[options.get("score", "scaled_dot")], options["window"])
    alibi = options.get("position") == "alibi"
    if name == "multihead":
        formula = SCORES[options.get("score", "scaled_dot")]

        def multihead(attn, q, k):
            H = attn.num_heads
            return formula(attn.inner.score, _heads(q, attn.W_q, H), _heads(k, attn.W_k, H))

        if alibi:
            H = options["num_heads"]
            return _alibi(multihead, [2 ** (-8 * h / H) for h in range(1, H + 1)])
        return multihead
    formula = SCORES[options.get("score", "scaled_dot") if name in POOLINGS else name]
    plain = lambda attn, q, k: formula(attn.score, q, k)  # noqa: E731
    return _alibi(plain, options.get("alibi_slope", 2**-8)) if alibi else plain
