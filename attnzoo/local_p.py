"""Local attention with a predicted centre (Luong et al. 2015, "local-p").

First the hard step, a centre per query, then soft attention in a window around it:

* ``p_i = Nk sigmoid(v_p^T tanh(W_p q_i))`` (``Nk`` the keys' sequence length, padding included, so that masks
  and lengths stay interchangeable; a centre whose window holds no valid key gives a zero output);
* keys ``j`` with ``|j - p_i| <= D`` (the window ``D``, keys being positions ``0 .. L_i - 1``);
* ``w_ij = softmax_j(s_ij) exp(-(j - p_i)^2 / (2 sigma^2))``, renormalised over those keys, ``sigma = D / 2``
  (so ``w_ij = softmax_j(s_ij - (j - p_i)^2 / (2 sigma^2))``), differentiable in ``p_i`` through the Gaussian.

A window holds at most ``2D + 1`` keys: each query's keys are gathered, and its scores computed on them only
(``O(Nq (2D + 1))`` scores, no ``Nq x Nk`` tensor unless the weights are asked for). The Gaussian is computed
from the difference ``j - p_i`` (never expanded: that would cancel in float32 at long sequences).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .interface import Attention
from .masks import MaskSpec
from .measures import soft_weights_entropy
from .pooling import masked_softmax
from .variants import zero_attached


class PredictedCenterAttention(Attention):
    """Local-p attention: ``score`` pooled softly around a centre ``p_i`` predicted from the query (module doc).

    query ``(..., Nq, query_dim)``, key ``(..., Nk, Dk)``, value ``(..., Nk, Dv)`` -> ``(..., Nq, Dv)``;
    ``center_hidden``: the width of ``W_p`` (default ``query_dim``). :attr:`last_centers` holds the centres
    ``p (..., Nq)`` of the last call.
    """

    takes_bias = True

    def __init__(self, score: nn.Module, window: int, query_dim: int, center_hidden: int | None = None):
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: a predicted centre needs an int window >= 1 (sigma = window / 2), "
                             f"got {window!r}")
        if getattr(score, "position", None) is not None:
            raise ValueError(f"position: local-p gathers each query's window, the score's {score.position!r} "
                             "needs the keys in sequence; use position=None")
        self.score, self.half_width = score, window
        self.W_p = nn.Linear(query_dim, center_hidden or query_dim, bias=False)
        self.v_p = nn.Linear(center_hidden or query_dim, 1, bias=False)
        self.last_centers: Tensor | None = None

    @property
    def capabilities(self) -> frozenset:
        # compact_support: a window can hold no valid key; no bfloat16: rounding the centre moves keys across its edge
        return frozenset({"soft", "positional", "learnable", "bias", "compact_support"})

    def extra_repr(self) -> str:
        return f"window={self.half_width}, predict_center=True"

    def centers(self, query: Tensor, nk: int) -> Tensor:
        """``p_i = Nk sigmoid(v_p^T tanh(W_p q_i))``, ``(..., Nq)``."""
        return nk * torch.sigmoid(self.v_p(torch.tanh(self.W_p(query))).squeeze(-1))

    def _window(self, query, key, value, spec: MaskSpec):
        """Per query: its window's key positions ``(..., Nq, W)``, masked scores and the values ``(..., Nq, W, Dv)``."""
        p = self.centers(query, spec.nk)
        self.last_centers = p.detach()
        width = 2 * self.half_width + 1
        start = torch.ceil(p.detach() - self.half_width).long()
        j = start.unsqueeze(-1) + torch.arange(width, device=query.device)  # (..., Nq, W)
        inside = (j >= 0) & (j < spec.nk) & ((j - p.detach().unsqueeze(-1)).abs() <= self.half_width)
        jc = j.clamp(0, max(spec.nk - 1, 0))
        lead = (*spec.batch, spec.nq * width)
        flat = jc.reshape(lead)
        keys = key.gather(-2, flat.unsqueeze(-1).expand(*lead, key.shape[-1])).unflatten(-2, (spec.nq, width))
        vals = value.gather(-2, flat.unsqueeze(-1).expand(*lead, value.shape[-1])).unflatten(-2, (spec.nq, width))
        s = self.score(query.unsqueeze(-2), keys).squeeze(-2)  # (..., Nq, W): each query against its own keys
        valid = inside & self._spec_at(spec, jc, query.device)
        if spec.bias is not None:
            b = spec.bias.expand(*spec.batch, spec.nq, spec.nk)
            s = s + b.gather(-1, jc).to(s.dtype)
        dist = j.to(query.dtype) - p.unsqueeze(-1)  # the difference first: exact for any sequence length
        s = s - dist.square() / (2 * (self.half_width / 2) ** 2)
        return j, jc, s, valid, vals

    @staticmethod
    def _spec_at(spec: MaskSpec, jc: Tensor, device) -> Tensor:
        """The call's masks at the gathered keys ``jc (..., Nq, W)``."""
        ok = torch.ones_like(jc, dtype=torch.bool)
        if spec.valid_lens is not None:
            ok = ok & (jc < spec.valid_lens.unsqueeze(-1))
        if spec.mask is not None:
            ok = ok & spec.mask.expand(*spec.batch, spec.nq, spec.nk).gather(-1, jc)
        return ok

    def attend(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
               return_weights: bool) -> tuple[Tensor, Tensor | None]:
        out, weights, _ = self._attend(query, key, value, spec, return_weights, False)
        return out, weights

    def attend_entropy(self, query, key, value, spec, return_weights):
        return self._attend(query, key, value, spec, return_weights, True)

    def _attend(self, query, key, value, spec: MaskSpec, return_weights: bool, entropy: bool):
        if spec.causal or spec.window is not None or spec.alibi is not None:
            raise ValueError("mask: local-p attention takes valid_lens, mask and bias; its window is its own")
        if spec.nq == 0 or spec.nk == 0:
            zero = zero_attached(query, key, value, *self.parameters(), *(() if spec.bias is None else (spec.bias,)))
            out = value.new_zeros(*spec.batch, spec.nq, value.shape[-1]) + zero
            w = value.new_zeros(*spec.batch, spec.nq, spec.nk) + zero
            return out, (w if return_weights else None), w.sum(-1)
        if hasattr(self.score, "check"):
            self.score.check(query, key)
        j, jc, s, valid, vals = self._window(query, key, value, spec)
        if entropy:
            w, ent = soft_weights_entropy(s, valid)
        else:
            w, ent = masked_softmax(s, valid), None
        out = (w.unsqueeze(-2) @ vals).squeeze(-2)
        if not return_weights:
            return out, None, ent
        dense = w.new_zeros(*spec.batch, spec.nq, spec.nk).scatter_add(-1, jc, w * valid)
        return out, dense, ent
