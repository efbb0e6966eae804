"""Positional terms applied to the inputs of a score.

Rotary embedding (Su et al.; the half-split "rotate_half" convention of GPT-NeoX / Llama): for
``x (..., N, d)`` at positions ``p = offset + 0 .. N-1`` and ``theta_j = base^(-2j / d)``, ``j < d/2``,
``rope(x) = x * cos(p theta) + rotate_half(x) * sin(p theta)`` with ``rotate_half(x) = [-x_2, x_1]``
(``x_1, x_2`` the two halves, the angles repeated over both). ``rope(q_i) . rope(k_j)`` depends on
``i - j`` only. Query ``i`` and key ``j`` sit at positions ``i`` and ``j`` (the indices causal and
window masks use).
"""

from __future__ import annotations

import torch
from torch import Tensor

POSITIONS = (None, "rope")


def check_position(position, rope_base) -> None:
    if position not in POSITIONS:
        raise ValueError(f"position: got {position!r}, expected one of {POSITIONS}")
    if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not rope_base > 1:
        raise ValueError(f"rope_base: expected a number > 1, got {rope_base!r}")


def rope(x: Tensor, base: float = 10000.0, offset: int = 0) -> Tensor:
    """``x (..., N, d)`` rotated at positions ``offset .. offset + N - 1`` (d even); the angles are
    computed in float64 and rounded once to ``x``'s dtype."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"position='rope': needs an even feature dim, got {d} (shape {tuple(x.shape)})")
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)  # (d/2,)
    pos = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64, device=x.device)
    ang = torch.outer(pos, inv)  # (N, d/2): the angles of both halves
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)
