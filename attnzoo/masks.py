"""One mask type for every variant: valid lengths, a bool mask, causality and a window.

Key ``j`` takes part for query ``i`` iff all of these hold:

* ``j < valid_lens[..., i]``   (d2l's ``valid_lens``: shape ``batch`` or ``batch + (Nq,)``)
* ``mask[..., i, j]``           (bool, broadcastable to ``batch + (Nq, Nk)``, True = attend)
* ``j <= i``                    (``causal``)
* ``|i - j| <= window``         (local window)

Positions are indices: query ``i`` sits at key position ``i + q_offset``; ``q_offset = 0`` is the top-left
alignment of ``torch.nn.functional.scaled_dot_product_attention`` (the default, also when ``Nq != Nk``),
``q_offset = Nk - Nq`` the bottom-right one of a KV cache (``align="bottom_right"``: the last query sees every
key). In the rules above and below, ``i`` stands for the query's position.

The spec also carries the positional terms added to every score before pooling:
``s_ij = (s_ij + bias[..., i, j]) - m |i - j|`` (a float ``bias`` of the call; ALiBi slopes ``m``).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    bias: Tensor | None = None  # float, broadcastable to batch + (Nq, Nk)
    alibi: Tensor | None = None  # float ALiBi slopes, broadcastable to batch
    q_offset: int = 0  # query i sits at key position i + q_offset
    finite_values: bool = False  # the call found every value finite (no inf / NaN to keep from other queries)

    def _replace(self, **changes) -> MaskSpec:
        """``dataclasses.replace`` without re-running ``__init__`` (this is on every call's path)."""
        new = object.__new__(MaskSpec)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @property
    def is_empty(self) -> bool:
        return self.valid_lens is None and self.mask is None and not self.causal and self.window is None

    def may_have_empty_rows(self) -> bool:
        """Whether some query may have no valid key (False is exact: every query has one)."""
        if self.nk == 0 or self.valid_lens is not None or self.mask is not None:
            return self.nq > 0
        first, last = self.q_offset, self.q_offset + self.nq - 1  # the queries' positions
        if self.causal and first < 0:
            return True
        return self.window is not None and (first + self.window < 0 or last - self.window > self.nk - 1)

    def with_structure(self, causal: bool = False, window: int | None = None, align: str = "top_left") -> MaskSpec:
        """Add a variant's own causality / window to the user's masks, its queries at ``align`` (the offset adds to
        the spec's own, e.g. a KV cache's)."""
        if not causal and window is None and align == "top_left":
            return self
        return self._replace(causal=self.causal or causal, window=window if window is not None else self.window,
                             q_offset=self.q_offset + align_offset(align, self.nq, self.nk))

    def with_alibi(self, slopes: Tensor | None) -> MaskSpec:
        """Add a variant's ALiBi slopes (broadcastable to ``batch``)."""
        return self if slopes is None else self._replace(alibi=slopes)

    def add_positions(self, scores: Tensor, i0: int = 0, j0: int = 0) -> Tensor:
        """``(s + bias) - m |i - j|`` for the scores ``(..., bq, bk)`` of queries ``i0 ..`` and keys ``j0 ..``
        (the kernels' order of operations), in the scores' dtype."""
        bq, bk = scores.shape[-2], scores.shape[-1]
        if self.bias is not None:
            b = self.bias
            if b.dim() >= 2 and b.shape[-2] > 1:
                b = b[..., i0:i0 + bq, :]
            if b.dim() >= 1 and b.shape[-1] > 1:
                b = b[..., j0:j0 + bk]
            scores = scores + b.to(scores.dtype)
        if self.alibi is not None:
            i = torch.arange(i0, i0 + bq, device=scores.device).view(bq, 1) + self.q_offset
            j = torch.arange(j0, j0 + bk, device=scores.device).view(1, bk)
            scores = scores + alibi_term(self.alibi[..., None, None], i, j, scores.dtype)
        return scores

    def without_offset(self) -> MaskSpec:
        """The same masks and positional terms with ``q_offset = 0`` (for kernels that take no offset): causality
        and window become a bool ``(Nq, Nk)`` mask, ALiBi a bias term."""
        if not self.q_offset or self.nq == 0 or self.nk == 0:
            return self._replace(q_offset=0)
        dev = next((t.device for t in (self.valid_lens, self.mask, self.bias, self.alibi) if t is not None), None)
        i = torch.arange(self.nq, device=dev).view(-1, 1) + self.q_offset
        j = torch.arange(self.nk, device=dev).view(1, -1)
        mask, bias = self.mask, self.bias
        structure = structure_mask(i, j, self.causal, self.window)
        if structure is not None:
            mask = structure if mask is None else mask & structure
        if self.alibi is not None:
            ref = self.bias if self.bias is not None else self.alibi
            term = alibi_term(self.alibi[..., None, None], i, j, ref.dtype)
            bias = term if bias is None else bias + term
        return self._replace(mask=mask, causal=False, window=None, alibi=None, bias=bias, q_offset=0)

    def flat_positions(self) -> tuple[Tensor | None, Tensor | None]:
        """Kernel arguments for the batch flattened to ``B``: the bias as ``(B1, B2, Nq', Nk')`` with ``B1 B2 = B``
        and each dim its size or 1 (broadcast, so that the kernels sum its gradient; only when the batch
        dims do not group into two is the bias expanded over them), and the slopes as ``(B,)``."""
        bias = None if self.bias is None else _bias_4d(self.bias, self.batch)
        alibi = None
        if self.alibi is not None:
            alibi = self.alibi.expand(self.batch).reshape(-1).contiguous()
        return bias, alibi

    def dense(self, device: torch.device | str | None = None) -> Tensor:
        """Bool ``batch + (Nq, Nk)``: which (query, key) pairs take part (an expanded view)."""
        return self.block(0, self.nq, 0, self.nk, device)

    def block(self, i0: int, i1: int, j0: int, j1: int, device: torch.device | str | None = None) -> Tensor:
        """Bool ``batch + (i1 - i0, j1 - j0)``: :meth:`dense` for queries ``i0 .. i1 - 1`` and keys ``j0 .. j1 - 1``,
        built for that block alone (no ``Nq x Nk`` tensor)."""
        i = torch.arange(i0, i1, device=device).view(-1, 1) + self.q_offset
        j = torch.arange(j0, j1, device=device).view(1, -1)
        valid = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
        structure = structure_mask(i, j, self.causal, self.window)
        if structure is not None:
            valid = valid & structure
        if self.valid_lens is not None:
            vl = self.valid_lens
            valid = valid & (j < (vl[..., i0:i1] if vl.shape[-1] > 1 else vl).unsqueeze(-1))
        if self.mask is not None:
            m = self.mask
            if m.dim() >= 2 and m.shape[-2] > 1:
                m = m[..., i0:i1, :]
            if m.dim() >= 1 and m.shape[-1] > 1:
                m = m[..., j0:j1]
            valid = valid & m
        return valid.expand(*self.batch, i1 - i0, j1 - j0)

    def split_heads(self, num_heads: int) -> MaskSpec:
        """The same masks for inputs of batch shape ``batch + (num_heads,)``."""
        vl = None if self.valid_lens is None else self.valid_lens.unsqueeze(-2)
        m = None
        if self.mask is not None:
            m = self.mask.reshape((1,) * max(0, 2 - self.mask.dim()) + tuple(self.mask.shape)).unsqueeze(-3)
        return self._replace(batch=(*self.batch, num_heads), valid_lens=vl, mask=m)

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


def structure_mask(i: Tensor, j: Tensor, causal: bool, window: int | None) -> Tensor | None:
    """Bool ``(j <= i) & (|i - j| <= window)`` (each part when asked for; None for neither) for query positions
    ``i`` and key positions ``j``, broadcast against each other."""
    valid = (j <= i) if causal else None
    if window is not None:
        near = (i - j).abs() <= window
        valid = near if valid is None else valid & near
    return valid


def alibi_term(slopes: Tensor, i: Tensor, j: Tensor, dtype: torch.dtype) -> Tensor:
    """ALiBi's ``-m |i - j|`` in ``dtype`` for slopes ``m`` and positions ``i``, ``j`` (broadcast)."""
    return -slopes.to(dtype) * (i - j).abs().to(dtype)


ALIGNS = ("top_left", "bottom_right")


def check_align(align: str) -> str:
    if align not in ALIGNS:
        raise ValueError(f"align: got {align!r}, expected one of {ALIGNS} (where query i sits among the keys)")
    return align


def align_offset(align: str, nq: int, nk: int) -> int:
    """The key position of query 0: 0 (top-left) or ``nk - nq`` (bottom-right)."""
    return nk - nq if check_align(align) == "bottom_right" else 0


def _bias_4d(bias: Tensor, batch: tuple[int, ...]) -> Tensor:
    """``bias`` (broadcastable to ``batch + (Nq, Nk)``) as ``(B1, B2, q, k)``: runs of batch dims that the bias
    broadcasts over (size 1) or spans become one dim each; more than two runs expand the bias over the batch."""
    n = len(batch)
    b = bias.reshape((1,) * (n + 2 - bias.dim()) + tuple(bias.shape))
    q, k = b.shape[-2], b.shape[-1]
    runs: list[list[int]] = []  # [kind, size]: kind 1 = spanned, 0 = broadcast
    for d, size in enumerate(batch):
        if size == 1:
            continue
        kind = int(b.shape[d] != 1)
        if runs and runs[-1][0] == kind:
            runs[-1][1] *= size
        else:
            runs.append([kind, size])
    if len(runs) > 2:
        B = 1
        for size in batch:
            B *= size
        return b.expand(*batch, q, k).reshape(B, 1, q, k)
    runs = [[0, 1]] * (2 - len(runs)) + runs
    return b.reshape(*(size if kind else 1 for kind, size in runs), q, k)
