"""The one interface every attention variant implements."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from . import prepared as _prepared
from .masks import MaskSpec
from .measures import weights_entropy
from .prepared import PreparedKeys
from .validation import all_finite, check_qkv, mask_spec, zero_unused


def _zero_padding(key: Tensor, value: Tensor, used: Tensor, spec: MaskSpec):
    """Keys and values at keys no query attends (``used`` False) zeroed when they hold inf or NaN: padding may hold
    garbage, and ``0 * NaN`` would leak into outputs (values) and gradients (keys: their scores are masked out
    of the forward, so they are checked only when gradients are on). Finite ones are left as they are (no
    copy); the spec then records that the values are finite (the variants skip their own check)."""
    compiling = torch.compiler.is_compiling()  # (no host sync inside a graph: zero them)
    if not compiling and all_finite(value):
        spec = replace(spec, finite_values=True)
    else:
        value = value.masked_fill(~used.unsqueeze(-1), 0.0)
    if compiling or torch.is_grad_enabled():
        key = zero_unused(key, used)
    return key, value, spec


class Attention(nn.Module):
    """Base class of every attnzoo variant.

    ``out = attn(query, key, value, mask=None, *, valid_lens=None, bias=None)`` with
    query ``(..., Nq, Dq)``, key ``(..., Nk, Dk)``, value ``(..., Nk, Dv)`` returns
    ``(..., Nq, Dv)`` (:meth:`output_dim` says when it differs).
    ``return_weights=True`` also returns the weights ``(..., Nq, Nk)``
    (multi-head: ``(..., H, Nq, Nk)``), ``return_entropy=True`` their entropy ``(..., Nq)``
    (:mod:`attnzoo.measures`; both: ``(out, weights, entropy)``). ``attn(x)`` is self-attention,
    ``attn(x, x, x)``; ``attn(q, k)`` takes ``value = key``. Masks: see :mod:`attnzoo.masks`; a query
    with no valid key gets a zero output, zero weights and zero gradients. ``bias``: a float
    tensor broadcastable to ``(..., Nq, Nk)`` (multi-head: ``(..., H, Nq, Nk)``) added to the scores
    (SDPA's float ``attn_mask``; ``-inf`` masks a key), differentiable; variants that read no scores
    reject it (:attr:`takes_bias`). ``key`` may be :meth:`prepare_keys`'s result (the score's key side computed once).

    Subclasses implement :meth:`attend`, which receives validated inputs and a
    :class:`~attnzoo.masks.MaskSpec`; values at keys no query may attend are already zeroed.
    """

    #: what the conformance suite may expect of this instance (see :mod:`attnzoo.testing`)
    capabilities: frozenset = frozenset()

    #: whether ``bias=`` reaches the scores (variants that implement it set this)
    takes_bias: bool = False

    #: the dims a ``bias`` has between the batch and ``(Nq, Nk)``: ``(H,)`` for multi-head variants
    bias_heads: tuple[int, ...] = ()

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                mask: Tensor | None = None, *, valid_lens: Tensor | None = None, bias: Tensor | None = None,
                return_weights: bool = False, return_entropy: bool = False):
        prepared = key if isinstance(key, PreparedKeys) else None
        if prepared is not None:
            key = prepared.check(self)
        key = query if key is None else key  # attn(x): self-attention, attn(x, x, x)
        value = key if value is None else value
        check_qkv(query, key, value)
        if bias is not None and not self.takes_bias:
            raise ValueError(f"bias: {type(self).__name__} ({self.extra_repr() or 'this variant'}) reads no scores "
                             "a bias could shift; call it without bias=")
        spec = mask_spec(query, key, mask, valid_lens, bias, self.bias_heads)
        used = spec.keys_in_use()
        if used is not None:
            key, value, spec = _zero_padding(key, value, used, spec)
        if prepared is not None:
            with _prepared.active(prepared, used):
                return self._call(query, key, value, spec, return_weights, return_entropy)
        return self._call(query, key, value, spec, return_weights, return_entropy)

    def _call(self, query, key, value, spec: MaskSpec, return_weights: bool, return_entropy: bool):
        if not return_entropy:
            out, weights = self.attend(query, key, value, spec, return_weights)
            return (out, weights) if return_weights else out
        out, weights, ent = self.attend_entropy(query, key, value, spec, return_weights)
        return (out, weights, ent) if return_weights else (out, ent)

    def prepare_keys(self, key: Tensor) -> PreparedKeys:
        """``key (..., Nk, Dk)`` with the key-side terms of this variant's score computed once; pass the result as
        ``key`` of later calls (:mod:`attnzoo.prepared`). Variants whose score has no key-side term keep the keys."""
        from .validation import check_tensor

        check_tensor("key", key)
        score = getattr(self, "score", None)
        prepare = getattr(score, "prepare_key", None)
        return PreparedKeys(self, score, key, prepare(key) if callable(prepare) else {})

    def attend(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
               return_weights: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def attend_entropy(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
                       return_weights: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        """:meth:`attend` plus the weights' entropy (:mod:`attnzoo.measures`); this default computes it from
        the weights :meth:`attend` returns, variants with a pass that needs no weights override it."""
        out, weights = self.attend(query, key, value, spec, True)
        return out, (weights if return_weights else None), weights_entropy(weights)

    def output_from_weights(self, weights: Tensor, value: Tensor) -> Tensor:
        """The output that ``weights`` (as returned) give on ``value``: ``weights @ value``."""
        return weights @ value

    def output_dim(self, value_dim: int) -> int:
        """Last dim of the output for values of last dim ``value_dim``."""
        return value_dim

    def explain(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *,
                valid_lens: Tensor | None = None, bias: Tensor | None = None) -> str:
        """Which backend a call with these inputs would use, and why (the inputs are validated as in a call)."""
        check_qkv(query, key, value)
        mask_spec(query, key, mask, valid_lens, bias, self.bias_heads)
        return self.backend_for(query, key, value)

    def backend_for(self, query: Tensor, key: Tensor, value: Tensor) -> str:
        """:meth:`explain` for validated inputs; variants with a fused path override it."""
        return "reference: this variant has no fused path"
