"""Checks of the common call ``attn(query, key, value, mask, valid_lens=...)``.

Every error names the argument, what it got and what it needs; nothing is
broadcast silently into a different problem.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .masks import MaskSpec


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LENGTH_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def all_finite(t: Tensor) -> bool:
    """Whether ``t`` holds no inf / NaN, from one pass (``aminmax``: NaN reaches both ends) and a host sync."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


def zero_unused(t: Tensor, used: Tensor) -> Tensor:
    """``t (..., Nk, F)`` with the rows of keys not in use (``used (..., Nk)`` False) zeroed when it holds inf / NaN
    (always inside a graph: no host sync there), else ``t`` itself: padding may hold garbage, and ``0 * NaN``
    would leak."""
    if not torch.compiler.is_compiling() and all_finite(t):
        return t
    return t.masked_fill(~used.unsqueeze(-1), 0.0)


def check_window(window) -> int | None:
    """``window``: None (no window) or an int >= 0, keeping keys with ``|i - j| <= window``."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
        raise ValueError(f"window: expected None or an int >= 0 (keys with |i - j| <= window), got {window!r}")
    return window


def _check_dense(name: str, t: Tensor) -> None:
    if t.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}; call .to_dense() first")


def check_tensor(name: str, t, min_dim: int = 2) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    _check_dense(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name}: expected shape (..., N, D) with at least {min_dim} dims, got {_shape(t)}")


def _plain_qkv(query, key, value) -> bool:
    """The common well-formed call, accepted in one expression (``check_qkv`` explains every other)."""
    return (isinstance(query, Tensor) and isinstance(key, Tensor) and isinstance(value, Tensor)
            and query.dtype in FLOAT_DTYPES and key.dtype is query.dtype and value.dtype is query.dtype
            and query.layout is torch.strided and key.layout is torch.strided and value.layout is torch.strided
            and query.device == key.device == value.device and query.dim() >= 2 and key.dim() >= 2 and value.dim() >= 2
            and query.shape[:-2] == key.shape[:-2] == value.shape[:-2]
            and query.shape[-1] > 0 and key.shape[-1] > 0 and value.shape[-2] == key.shape[-2])


def check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    """Types, ranks, dtypes, devices and the shapes that must agree between query, key and value."""
    if _plain_qkv(query, key, value):
        return
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, t)
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(f"{name}: dtype {t.dtype} differs from query's {query.dtype}; all inputs need one dtype")
        if t.device != query.device:
            raise ValueError(f"{name}: on device {t.device}, query on {query.device}; all inputs need one device")
    if key.shape[:-2] != query.shape[:-2] or value.shape[:-2] != query.shape[:-2]:
        raise ValueError(
            "query, key, value: batch dims must be equal, got query "
            f"{_shape(query)}, key {_shape(key)}, value {_shape(value)} (batch dims {tuple(query.shape[:-2])}, "
            f"{tuple(key.shape[:-2])}, {tuple(value.shape[:-2])})"
        )
    for name, t in (("query", query), ("key", key)):
        if t.shape[-1] == 0:
            raise ValueError(f"{name}: needs at least one feature (last dim >= 1), got shape {_shape(t)}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value: needs one row per key, Nk = key.shape[-2] = {key.shape[-2]}, got value {_shape(value)}"
        )


def _check_broadcasts(name: str, t: Tensor, full: tuple[int, ...], names: str = "") -> None:
    """``t``'s shape broadcasts to exactly ``full`` (``names`` spells it, e.g. ``"(..., Nq, Nk) = "``)."""
    try:
        if torch.broadcast_shapes(t.shape, full) != torch.Size(full):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"{name}: shape {_shape(t)} does not broadcast to {names}{full}") from None


def check_bias(bias, query: Tensor, full: tuple[int, ...]) -> None:
    """``bias``: a dense float tensor in the query's dtype and device, broadcastable to ``full``."""
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        got = bias.dtype if isinstance(bias, Tensor) else type(bias).__name__
        raise TypeError(f"bias: expected a float tensor (added to the scores; a bool mask goes in mask=), got {got}")
    _check_dense("bias", bias)
    if bias.dtype != query.dtype:
        raise TypeError(f"bias: dtype {bias.dtype} differs from query's {query.dtype}; pass it in the inputs' dtype")
    if bias.device != query.device:
        raise ValueError(f"bias: on device {bias.device}, query on {query.device}")
    _check_broadcasts("bias", bias, full)


def mask_spec(query: Tensor, key: Tensor, mask=None, valid_lens=None, bias=None,
              heads: tuple[int, ...] = ()) -> MaskSpec:
    """Validate ``mask``, ``valid_lens`` and ``bias`` against the inputs and normalise them; ``bias``
    broadcasts to ``batch + heads + (Nq, Nk)`` (``heads``: ``(H,)`` for multi-head variants)."""
    batch, nq, nk = tuple(query.shape[:-2]), query.shape[-2], key.shape[-2]
    full = (*batch, nq, nk)
    if bias is not None:
        check_bias(bias, query, (*batch, *heads, nq, nk))
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a bool tensor (True = attend), got {got}")
        _check_dense("mask", mask)
        if mask.device != query.device:
            raise ValueError(f"mask: on device {mask.device}, query on {query.device}")
        _check_broadcasts("mask", mask, full, "(..., Nq, Nk) = ")
    if valid_lens is not None:
        if not isinstance(valid_lens, Tensor):
            valid_lens = torch.as_tensor(valid_lens, device=query.device)
        _check_dense("valid_lens", valid_lens)
        if valid_lens.dtype not in LENGTH_DTYPES:  # uint16/32/64 would wrap on the way to int64
            raise TypeError(f"valid_lens: expected an integer tensor (int8/16/32/64 or uint8), "
                            f"got dtype {valid_lens.dtype}")
        if valid_lens.device != query.device:
            raise ValueError(f"valid_lens: on device {valid_lens.device}, query on {query.device}")
        if tuple(valid_lens.shape) == batch:
            valid_lens = valid_lens.unsqueeze(-1)
        elif tuple(valid_lens.shape) != (*batch, nq):
            raise ValueError(
                f"valid_lens: expected shape {batch} (one length per batch element) or {(*batch, nq)} "
                f"(one per query), got {_shape(valid_lens)}"
            )
        if valid_lens.numel() and torch.compiler.is_compiling():  # no host sync in a graph: a check inside it
            torch._assert_async((valid_lens >= 0).all(), "valid_lens: lengths must be >= 0")
        elif valid_lens.numel() and valid_lens.device.type == "cpu" and int(valid_lens.min()) < 0:
            raise ValueError(f"valid_lens: lengths must be >= 0, got minimum {int(valid_lens.min())}")
        valid_lens = valid_lens.to(torch.int64)
    return MaskSpec(batch, nq, nk, valid_lens=valid_lens, mask=mask, bias=bias)
