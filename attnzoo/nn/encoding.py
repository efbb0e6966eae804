"""Absolute positional encodings added to a sequence: the Transformer's sinusoids or a learned table.

Sinusoidal (Vaswani et al. 2017; d2l's ``PositionalEncoding``, the same numbers): for position ``i`` and
``j = 0 .. ceil(d/2) - 1``,

``P[i, 2j] = sin(i / 10000^(2j/d))``,   ``P[i, 2j+1] = cos(i / 10000^(2j/d))``

computed in float64 and rounded once to the input's dtype. An odd ``d`` has one more sine column than cosine
columns (d2l's construction fails there).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KINDS = ("sinusoidal", "learned")


def _check_int(name: str, value, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum} ({what}), got {value!r}")
    return value


def sinusoidal_table(max_len: int, d: int, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """The sinusoidal table ``P (max_len, d)``: ``P[i, 2j] = sin(i / 10000^(2j/d))``,
    ``P[i, 2j+1] = cos(i / 10000^(2j/d))``, computed in float64, then cast to ``dtype``."""
    _check_int("max_len", max_len, 1, "the number of positions")
    _check_int("d", d, 1, "the encoding's width")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    i = torch.arange(max_len, dtype=torch.float64, device=device).unsqueeze(-1)
    angles = i / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # (max_len, ⌈d/2⌉)
    P = torch.empty(max_len, d, dtype=torch.float64, device=device)
    P[:, 0::2] = torch.sin(angles)
    P[:, 1::2] = torch.cos(angles[:, : d // 2])
    return P.to(dtype)


class PositionalEncoding(nn.Module):
    """``forward(x, offset=0) = dropout(x + P[offset : offset + N])`` for ``x (..., N, num_hiddens)``.

    ``kind="sinusoidal"``: ``P`` is :func:`sinusoidal_table` (a non-persistent float64 buffer, cast to
    ``x``'s dtype in the call; not in the ``state_dict``). ``kind="learned"``: ``P`` is a parameter
    ``(max_len, num_hiddens)`` initialised ``N(0, 0.02²)``, as BERT and GPT-2 do. ``offset``: the position of
    ``x``'s first row (decoding one step at a time: ``offset`` = the number of positions already decoded);
    ``offset + N`` must not exceed ``max_len``.
    """

    def __init__(self, num_hiddens: int, max_len: int = 1000, kind: str = "sinusoidal", dropout: float = 0.0):
        super().__init__()
        self.num_hiddens = _check_int("num_hiddens", num_hiddens, 1, "the width of the inputs")
        self.max_len = _check_int("max_len", max_len, 1, "the number of positions")
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.kind = kind
        self.dropout = nn.Dropout(float(dropout))
        if kind == "sinusoidal":
            self.register_buffer("P", sinusoidal_table(max_len, num_hiddens, torch.float64), persistent=False)
        else:
            self.P = nn.Parameter(torch.empty(max_len, num_hiddens))
            nn.init.normal_(self.P, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"x: expected a float tensor (..., N, num_hiddens), got {got}")
        if x.dim() < 2 or x.shape[-1] != self.num_hiddens:
            raise ValueError(f"x: expected shape (..., N, num_hiddens={self.num_hiddens}), got {tuple(x.shape)}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset: expected an int >= 0 (the position of x's first row), got {offset!r}")
        n = x.shape[-2]
        if offset + n > self.max_len:
            raise ValueError(f"offset: positions offset .. offset + N - 1 = {offset} .. {offset + n - 1} need "
                             f"offset + N <= max_len = {self.max_len} (N = {n}); build with a larger max_len")
        return self.dropout(x + self.P[offset: offset + n].to(device=x.device, dtype=x.dtype))

    def extra_repr(self) -> str:
        return f"num_hiddens={self.num_hiddens}, max_len={self.max_len}, kind={self.kind!r}"


__all__ = ["KINDS", "PositionalEncoding", "sinusoidal_table"]
