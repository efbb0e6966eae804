"""Reading attention through its entropy: how spread each query's weights are, ``H_i = -sum_j w_ij log w_ij`` (nats).

Uniform weights over ``n`` keys give ``log n``, a one-hot gives 0, a row with no valid key 0.
``attn(q, k, v, return_entropy=True)`` returns it beside the output, ``(..., Nq)`` (multi-head
``(..., H, Nq)``), differentiable, so it can be a regulariser. Soft pooling computes it in the pass that
pools: the CPU kernels from the running ``sum_j exp(s_ij - m_i)(s_ij - m_i)`` (``entropy=True`` of the ops);
elsewhere one blockwise pass with the same sums (:mod:`attnzoo.blockwise`), or for small inputs the scores,
``H_i = -sum_j w_ij (s_ij - lse_i)``; none keeps an ``Nq x Nk`` tensor past that size. Hard weights are
one-hot (``H = 0``), average ones uniform (``H = log #valid``). Other variants: from the weights they return.
"""

from __future__ import annotations

import torch
from torch import Tensor


def weights_entropy(weights: Tensor) -> Tensor:
    """``-sum_j w_ij log w_ij`` over the last dim, with ``0 log 0 = 0`` (finite gradients at zero weights)."""
    safe = torch.where(weights > 0, weights, 1.0)
    return -(weights * safe.log()).sum(-1)


def soft_weights_entropy(scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax weights over the ``valid`` keys of ``scores (..., Nq, Nk)`` and their entropy ``(..., Nq)``:
    ``H_i = -sum_j w_ij (s_ij - lse_i)``; a row with no valid key has zero weights and ``H = 0``."""
    from .pooling import shifted_exp

    e, m, total = shifted_exp(scores, valid)
    z = torch.where(e > 0, scores - (m + total.log()), 0.0)  # log w_ij where w_ij > 0 (a -inf score: w = 0)
    w = e / total
    return w, -(w * z).sum(-1)


def entropy(attn, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, mask: Tensor | None = None,
            *, valid_lens: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """The entropy ``(..., Nq)`` (multi-head ``(..., H, Nq)``) of ``attn``'s weights on these inputs."""
    return attn(query, key, value, mask, valid_lens=valid_lens, bias=bias, return_entropy=True)[-1]
