"""Nadaraya–Watson kernel regression (1964) as attention (d2l 11.2).

``f(q) = sum_j K(u_j) v_j / sum_l K(u_l)`` with ``u_j = |(q - k_j) w|``: softmax pooling
of the score ``s = log K(u)`` gives exactly these weights. Kernels:

* ``gaussian``:     ``K = exp(-u^2 / 2)``       ``s = -u^2 / 2``
* ``boxcar``:       ``K = 1[u <= 1]``           ``s = 0`` inside, ``-inf`` outside
* ``epanechnikov``: ``K = max(0, 1 - u^2)``     ``s = log(1 - u^2)`` inside, ``-inf`` outside
* ``constant``:     ``K = 1``                   ``s = 0`` (average pooling)

A query whose window holds no key (boxcar, epanechnikov) gets zero weights.
``w`` is 1 by default; ``learnable=True`` makes it a parameter (d2l's parametric version).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import attnzoo
from attnzoo.scoring import Bilinear, Elementwise, Score

KERNELS = ("gaussian", "boxcar", "epanechnikov", "constant")


class NadarayaWatson(Score):
    """Kernel regression score ``log K(|(q - k) w|)`` (Gaussian by default)."""

    same_dim = True

    def __init__(self, kernel: str = "gaussian", w: float = 1.0, learnable: bool = False):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel: got {kernel!r}, expected one of {KERNELS}")
        self.kernel = kernel
        init = torch.tensor([float(w)])
        if learnable:
            self.w = nn.Parameter(init)
        else:
            self.register_buffer("w", init)
        self.capabilities = {"compact_support"} if kernel in ("boxcar", "epanechnikov") else set()

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, learnable={isinstance(self.w, nn.Parameter)}"

    def _u2(self, query: Tensor, key: Tensor) -> Tensor:
        diff = (query.unsqueeze(-2) - key.unsqueeze(-3)) * self.w.to(query.dtype)
        return (diff * diff).sum(-1)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        if self.kernel == "constant":
            return query.new_zeros(*query.shape[:-1], key.shape[-2])
        u2 = self._u2(query, key)
        if self.kernel == "gaussian":
            return -0.5 * u2
        inside = u2 <= 1 if self.kernel == "boxcar" else u2 < 1
        inner = torch.zeros_like(u2) if self.kernel == "boxcar" else torch.log((1 - u2).clamp_min(1e-30))
        s = torch.where(inside, inner, torch.full_like(u2, float("-inf")))
        return torch.where(u2.isnan(), u2, s)  # NaN stays NaN

    def fused(self, query, key):
        # u^2 = sum_h w^2 (q_h - k_h)^2: the elementwise family's (a - b)^2 term on the raw inputs, the
        # width in the weights, so that un-centred inputs keep their precision (no |q|^2 - 2 q.k + |k|^2)
        if self.kernel == "constant":
            return Bilinear(query.new_zeros(*query.shape[:-1], 1), key.new_zeros(*key.shape[:-1], 1))
        w2 = (self.w * self.w).to(query.dtype).expand(query.shape[-1])
        if self.kernel == "gaussian":
            return Elementwise(query, key, -0.5 * w2, term="sq_diff")
        return Elementwise(query, key, w2, term="sq_diff", profile=self.kernel)


@attnzoo.hookimpl
def attnzoo_register_scores(register):
    register("nadaraya_watson", NadarayaWatson)
