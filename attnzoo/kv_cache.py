"""A key/value cache for multi-head decoding: each step attends over every position cached so far.

``cache = attnzoo.KVCache()``, then per step ``y_t = attn(x_t, cache=cache)``: the step's keys and values
(projected, per key head) are appended, and its queries attend over all cached positions with the
bottom-right alignment (query ``i`` of an ``n``-token step sits at position ``L_old + i``), so a causal
module gives the outputs of running the whole sequence at once. Storage grows by doubling (amortised
O(1) per appended position); ``valid_lens=(batch,)`` in a call says how many of its ``n`` tokens are real
per batch entry (ragged prompts), so lengths may differ across the batch.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from .validation import all_finite


class KVCache:
    """Keys and values ``(batch..., G, capacity, d)`` of the positions seen so far, and their lengths.

    ``lengths``: int64 ``batch`` (one length per batch entry); ``length``: their common value, or None when
    they differ. ``capacity`` preallocates that many positions (it grows by doubling beyond). One cache
    serves one module (its projections and head layout); :meth:`reset` empties it for a new sequence.
    """

    def __init__(self, capacity: int = 0):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity: expected an int >= 0, got {capacity!r}")
        self.initial_capacity = capacity
        self.reset()

    def reset(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.lengths: Tensor | None = None
        self.length: int | None = 0
        self.finite = True  # every value written so far is finite (checked per step, on the step's values only)
        self._owner = None

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def __len__(self) -> int:
        """The longest cached length."""
        if self.lengths is None:
            return 0
        return self.length if self.length is not None else int(self.lengths.max())

    def _check(self, owner, k: Tensor, v: Tensor) -> None:
        if self._owner is not None and self._owner() is not owner:
            raise ValueError("cache: this KVCache holds another module's keys; use one cache per module "
                             "(or cache.reset())")
        if self.k is not None and (k.shape[:-2] != self.k.shape[:-2] or k.shape[-1] != self.k.shape[-1]
                                   or v.shape[-1] != self.v.shape[-1] or k.dtype != self.k.dtype
                                   or k.device != self.k.device):
            raise ValueError(f"cache: holds keys {tuple(self.k.shape[:-2])} x d {self.k.shape[-1]} "
                             f"({self.k.dtype}, {self.k.device}), this step has {tuple(k.shape[:-2])} x d "
                             f"{k.shape[-1]} ({k.dtype}, {k.device}); reset() it for a new batch")

    def _grow(self, need: int, k: Tensor, v: Tensor) -> None:
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity, self.initial_capacity, 16)
        nk = k.new_zeros(*k.shape[:-2], cap, k.shape[-1])
        nv = v.new_zeros(*v.shape[:-2], cap, v.shape[-1])
        if self.k is not None:
            n = self.capacity
            nk[..., :n, :] = self.k
            nv[..., :n, :] = self.v
        self.k, self.v = nk, nv

    def append(self, owner, k: Tensor, v: Tensor, step_lens: Tensor | None) -> tuple[Tensor, int | None]:
        """Append (for module ``owner``) ``k (batch..., G, n, d)`` and ``v (batch..., G, n, dv)``, of which
        ``step_lens`` (int64 ``batch``; None: all ``n``) are real per batch entry. Returns the lengths before the
        step and their common value (None when they differ). The cache keeps detached copies: gradients do not
        flow into past steps."""
        self._check(owner, k, v)
        batch, n = k.shape[:-3], k.shape[-2]
        old = self.lengths if self.lengths is not None else torch.zeros(batch, dtype=torch.int64, device=k.device)
        old_uniform = self.length if self.lengths is not None else 0
        self._grow((old_uniform if old_uniform is not None else int(old.max())) + n, k, v)
        k, v = k.detach(), v.detach()
        self.finite = self.finite and all_finite(v)
        if old_uniform is not None and step_lens is None:  # one slice for every batch entry
            self.k[..., old_uniform:old_uniform + n, :] = k
            self.v[..., old_uniform:old_uniform + n, :] = v
            new, new_uniform = old + n, old_uniform + n
        else:
            pos = old.unsqueeze(-1) + torch.arange(n, device=k.device)  # batch + (n,)
            take = torch.ones_like(pos, dtype=torch.bool) if step_lens is None else (
                torch.arange(n, device=k.device) < step_lens.unsqueeze(-1))
            G = k.shape[-3]
            flat_k = self.k.reshape(-1, G, self.capacity, k.shape[-1])
            flat_v = self.v.reshape(-1, G, self.capacity, v.shape[-1])
            bi = torch.arange(flat_k.shape[0], device=k.device).unsqueeze(-1)
            ix = pos.reshape(-1, n)
            sel = take.reshape(-1, n)  # padding tokens of the step are not written
            flat_k[bi.expand_as(ix)[sel], :, ix[sel]] = k.reshape(-1, G, n, k.shape[-1]).transpose(1, 2)[sel]
            flat_v[bi.expand_as(ix)[sel], :, ix[sel]] = v.reshape(-1, G, n, v.shape[-1]).transpose(1, 2)[sel]
            new = old + (n if step_lens is None else step_lens)
            first = new.reshape(-1)[:1]
            new_uniform = int(first) if new.numel() and bool((new == first).all()) else None
        self.lengths, self.length = new, new_uniform
        self._owner = weakref.ref(owner)
        return old, old_uniform

    def view(self) -> tuple[Tensor, Tensor]:
        """Keys and values up to the longest length: ``(batch..., G, len(self), d)``."""
        n = len(self)
        return self.k[..., :n, :], self.v[..., :n, :]
