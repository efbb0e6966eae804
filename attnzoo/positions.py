"""Positional terms: rotary embedding of a score's inputs, and ALiBi's linear bias of the scores.

Rotary embedding (Su et al.; the half-split "rotate_half" convention of GPT-NeoX / Llama): for
``x (..., N, d)`` at positions ``p = offset + 0 .. N-1`` and ``theta_j = base^(-2j / d)``, ``j < d/2``,
``rope(x) = x * cos(p theta) + rotate_half(x) * sin(p theta)`` with ``rotate_half(x) = [-x_2, x_1]``
(``x_1, x_2`` the two halves, the angles repeated over both). ``rope(q_i) . rope(k_j)`` depends on
``i - j`` only. Query ``i`` and key ``j`` sit at positions ``i`` and ``j`` (the indices causal and
window masks use).

ALiBi (Press et al.): ``s_ij -= m |i - j|`` inside the kernels (:class:`attnzoo.variants.PooledAttention`'s
``alibi``); multi-head attention uses the slopes ``m_h = 2^(-8h / H)``, ``h = 1 .. H`` (the paper's
geometric sequence; for ``H`` not a power of two its reference code interleaves two such sequences
instead), a single head ``alibi_slope`` (default ``2^-8``, the formula's ``H = 1``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

SCORE_POSITIONS = (None, "rope")  # a score's (rotary); ALiBi belongs to the pooling
DEFAULT_ALIBI_SLOPE = 2.0**-8


def alibi_slopes(num_heads: int) -> list[float]:
    """``m_h = 2^(-8h / H)`` for ``h = 1 .. H``."""
    return [2.0 ** (-8.0 * h / num_heads) for h in range(1, num_heads + 1)]


def alibi_slopes_tensor(alibi) -> Tensor:
    """ALiBi slopes (a number, or a sequence of one per head) as a float64 tensor; finite numbers only."""
    bad = isinstance(alibi, bool) or (isinstance(alibi, (list, tuple)) and any(isinstance(m, bool) for m in alibi))
    try:
        t = torch.as_tensor(alibi, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        bad = True
    if bad or t.dim() > 1 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"alibi_slope: expected a finite number (or one per head), got {alibi!r}")
    return t


def check_alibi_slope(position, alibi_slope) -> None:
    """``alibi_slope`` is an option of ``position="alibi"`` only (its value: :func:`alibi_slopes_tensor`)."""
    if alibi_slope is not None and position != "alibi":
        raise ValueError(f"alibi_slope: only with position='alibi', got position={position!r}")


def check_position(position, rope_base) -> None:
    """A score's ``position`` (:data:`SCORE_POSITIONS`) and ``rope_base``."""
    if position not in SCORE_POSITIONS:
        raise ValueError(f"position: got {position!r}, expected one of {SCORE_POSITIONS}")
    if isinstance(rope_base, bool) or not isinstance(rope_base, (int, float)) or not rope_base > 1:
        raise ValueError(f"rope_base: expected a number > 1, got {rope_base!r}")


@functools.lru_cache(maxsize=32)
def _rope_table(n: int, d: int, base: float, offset: int, device: torch.device, dtype: torch.dtype):
    """cos and sin of the angles ``(offset + 0 .. n-1) x base^(-2j/d)``, ``(n, d/2)``: computed in float64 and
    rounded once to ``dtype`` (cached: a model calls it with the same sizes every step)."""
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, also when first built in inference
        inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # (d/2,)
        pos = torch.arange(offset, offset + n, dtype=torch.float64, device=device)
        ang = torch.outer(pos, inv)
        return ang.cos().to(dtype), ang.sin().to(dtype)


def rope(x: Tensor, base: float = 10000.0, offset: int = 0) -> Tensor:
    """``x (..., N, d)`` rotated at positions ``offset .. offset + N - 1`` (d even); the angles are
    computed in float64 and rounded once to ``x``'s dtype."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"position='rope': needs an even feature dim, got {d} (shape {tuple(x.shape)})")
    table = _rope_table.__wrapped__ if torch.compiler.is_compiling() else _rope_table
    cos, sin = table(x.shape[-2], d, float(base), int(offset), x.device, x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)
