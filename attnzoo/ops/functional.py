"""The public wrappers of the fused ops: keyword arguments and names instead of the schemas' codes."""

from __future__ import annotations

import torch
from torch import Tensor

from ..validation import check_window
from .schemas import POOLINGS


def _mask_args(pooling: str, valid_lens, mask, causal: bool, window: int | None):
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: got {pooling!r}, expected one of {sorted(POOLINGS)}")
    check_window(window)
    return valid_lens, mask, POOLINGS[pooling], bool(causal), -1 if window is None else int(window)


def bilinear_attention(
    q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None = None, scale: float = 1.0, *,
    valid_lens: Tensor | None = None, mask: Tensor | None = None, pooling: str = "soft",
    causal: bool = False, window: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused ``pool_j(scale * q_i . k_j + key_bias_j) v_j``; 3-D inputs (B, N, D).

    Returns ``(out (B, Nq, Dv), lse (B, Nq), argmax (B, Nq) or empty)``; the
    mask arguments follow :mod:`attnzoo.ops.schemas`.
    """
    out, lse, argmax, _ = torch.ops.attnzoo.bilinear_fwd(
        q, k, v, key_bias, float(scale), *_mask_args(pooling, valid_lens, mask, causal, window)
    )
    return out, lse, argmax


def additive_attention(
    a: Tensor, b: Tensor, w: Tensor, v: Tensor, *,
    valid_lens: Tensor | None = None, mask: Tensor | None = None, pooling: str = "soft",
    causal: bool = False, window: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused ``pool_j(sum_h w_h tanh(a_ih + b_jh)) v_j``; a (B, Nq, H), b (B, Nk, H), w (H,)."""
    out, lse, argmax, _ = torch.ops.attnzoo.additive_fwd(
        a, b, w, v, *_mask_args(pooling, valid_lens, mask, causal, window)
    )
    return out, lse, argmax
