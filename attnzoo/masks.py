"""One mask type for every variant: valid lengths, a bool mask, causality and a window.

Key ``j`` takes part for query ``i`` iff all of these hold:

* ``j < valid_lens[..., i]``   (d2l's ``valid_lens``: shape ``batch`` or ``batch + (Nq,)``)
* ``mask[..., i, j]``           (bool, broadcastable to ``batch + (Nq, Nk)``, True = attend)
* ``j <= i``                    (``causal``)
* ``|i - j| <= window``         (local window)

Positions are indices: query ``i`` sits at key position ``i``, also when ``Nq != Nk``
(the top-left alignment of ``torch.nn.functional.scaled_dot_product_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class MaskSpec:
    """Normalised mask arguments for inputs with batch shape ``batch`` and ``Nq`` queries, ``Nk`` keys.

    ``valid_lens`` is int64 broadcastable to ``batch + (Nq,)``; ``mask`` is bool broadcastable to
    ``batch + (Nq, Nk)``. Neither is expanded in memory.
    """

    batch: tuple[int, ...]
    nq: int
    nk: int
    valid_lens: Tensor | None = None
    mask: Tensor | None = None
    causal: bool = False
    window: int | None = None

    @property
    def is_empty(self) -> bool:
        return self.valid_lens is None and self.mask is None and not self.causal and self.window is None

    def with_structure(self, causal: bool = False, window: int | None = None) -> MaskSpec:
        """Add a variant's own causality / window to the user's masks."""
        return replace(self, causal=self.causal or causal, window=window if window is not None else self.window)

    def dense(self, device: torch.device | str | None = None) -> Tensor:
        """Bool ``batch + (Nq, Nk)``: which (query, key) pairs take part (an expanded view)."""
        i = torch.arange(self.nq, device=device).view(self.nq, 1)
        j = torch.arange(self.nk, device=device).view(1, self.nk)
        valid = torch.ones(self.nq, self.nk, dtype=torch.bool, device=device)
        if self.causal:
            valid = valid & (j <= i)
        if self.window is not None:
            valid = valid & ((i - j).abs() <= self.window)
        if self.valid_lens is not None:
            valid = valid & (j < self.valid_lens.unsqueeze(-1))
        if self.mask is not None:
            valid = valid & self.mask
        return valid.expand(*self.batch, self.nq, self.nk)

    def split_heads(self, num_heads: int) -> MaskSpec:
        """The same masks for inputs of batch shape ``batch + (num_heads,)``."""
        vl = None if self.valid_lens is None else self.valid_lens.unsqueeze(-2)
        m = None
        if self.mask is not None:
            m = self.mask.reshape((1,) * max(0, 2 - self.mask.dim()) + tuple(self.mask.shape)).unsqueeze(-3)
        return replace(self, batch=(*self.batch, num_heads), valid_lens=vl, mask=m)

    def keys_in_use(self) -> Tensor | None:
        """Bool ``batch + (Nk,)``: keys some query may attend (from lengths and mask), or None if all.

        Cheap: it reduces the user's own (unexpanded) mask and lengths, never a ``Nq x Nk`` matrix.
        """
        used = None
        if self.valid_lens is not None:
            j = torch.arange(self.nk, device=self.valid_lens.device)
            vl = self.valid_lens
            longest = vl.amax(-1, keepdim=True) if vl.shape[-1] else vl.new_zeros(*vl.shape[:-1], 1)  # Nq = 0
            used = j < longest
        if self.mask is not None:
            m = self.mask.reshape((1,) * max(0, 2 - self.mask.dim()) + tuple(self.mask.shape)).any(-2)
            used = m if used is None else used & m
        return None if used is None else used.expand(*self.batch, self.nk)

    def flat(self) -> tuple[Tensor | None, Tensor | None]:
        """Kernel arguments for the batch flattened to ``B``: int64 ``(B, Nq)`` lengths, bool ``(B, Nq, Nk)`` mask."""
        B = 1
        for d in self.batch:
            B *= d
        vl = None
        if self.valid_lens is not None:
            vl = self.valid_lens.expand(*self.batch, self.nq).reshape(B, self.nq).contiguous()
        m = None
        if self.mask is not None:
            m = self.mask.expand(*self.batch, self.nq, self.nk).reshape(B, self.nq, self.nk)
        return vl, m
