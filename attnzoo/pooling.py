"""Reference poolings: how scores ``s (..., Nq, Nk)`` become weights over the valid keys.

* ``soft``:    ``w_ij = exp(s_ij) / sum_{l valid} exp(s_il)``
* ``hard``:    ``w_ij = 1[j = argmax_l s_il]`` (first index on ties); the gradient is the
  soft one (straight-through: ``w = onehot + p - p.detach()``), since the true one is zero.
* ``average``: ``w_ij = 1 / #valid_i`` (scores are ignored: d2l's baseline)
* ``sparsemax``, ``entmax15``: ``w_ij = [z_ij - tau_i]_+^(1/(alpha-1))``, ``z = (alpha - 1) s``, ``sum_j w_ij = 1``
  (alpha 2 and 1.5; exact zeros outside the support, :mod:`attnzoo.sparse`)

``local`` is soft pooling with a window mask, see :mod:`attnzoo.masks`.
A row with no valid key gets all-zero weights (so a zero output) and zero gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ops.schemas import POOLINGS as _CODES

KERNEL_POOLINGS = tuple(_CODES)  # the fused kernels' poolings, in the order of their codes
SPARSE_POOLINGS = ("sparsemax", "entmax15")  # reference and blockwise only
POOLINGS = KERNEL_POOLINGS + SPARSE_POOLINGS


def shifted_exp(scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(e, m, total)`` of the softmax over the valid keys: ``e = exp(s - m)`` (0 at masked keys), ``m`` the row
    max of the valid scores (0 for a row without one), ``total = sum_j e_j`` (1 for a row without a key)."""
    s = scores.masked_fill(~valid, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(m == float("-inf"), 0.0, m)  # no valid key; a NaN score keeps m NaN: the row is NaN, like torch
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    return e, m, torch.where(total == 0, 1.0, total)


def masked_softmax(scores: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the valid keys of each row; all-zero rows where no key is valid."""
    e, _, total = shifted_exp(scores, valid)
    return e / total


def one_hot_argmax(scores: Tensor, valid: Tensor) -> Tensor:
    """One-hot at the first arg-max over the valid keys; all-zero rows where no valid key has a finite score."""
    s = scores.detach().masked_fill(~valid, float("-inf"))
    idx = s.argmax(-1, keepdim=True)
    onehot = torch.zeros_like(s).scatter_(-1, idx, 1.0)
    return onehot * (s > float("-inf")).any(-1, keepdim=True)  # a row of -inf scores has no key either


def straight_through(onehot: Tensor, p: Tensor) -> Tensor:
    """Hard weights ``onehot`` in the forward, the gradient of the soft weights ``p`` in the backward."""
    return onehot + (p - p.detach())


def pool(scores: Tensor | None, valid: Tensor, pooling: str, dtype: torch.dtype) -> Tensor:
    """Weights ``(..., Nq, Nk)`` of ``pooling`` over ``valid`` keys (``scores`` unused for average)."""
    if pooling == "average":
        w = valid.to(dtype)
        return w / w.sum(-1, keepdim=True).clamp_min(1)
    if pooling == "soft":
        return masked_softmax(scores, valid)
    if pooling == "hard":
        return straight_through(one_hot_argmax(scores, valid), masked_softmax(scores, valid))
    if pooling in SPARSE_POOLINGS:
        from . import sparse

        return getattr(sparse, pooling)(scores, valid)
    raise ValueError(f"pooling: got {pooling!r}, expected one of {POOLINGS}")
