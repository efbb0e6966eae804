"""An example third-party attnzoo plugin: the Laplace-kernel score ``s = -|q - k|_1 / b``.

Installing this package (``pip install examples/attnzoo-laplace``) makes ``laplace``
appear in ``attnzoo.list_variants()`` through the ``attnzoo`` entry-point group; it then
composes with every pooling (``attnzoo.create("hard", score="laplace")``) and multi-head,
and runs on the fused kernels: ``fused()`` describes it as the elementwise family's
``|a - b|`` term (no ``Nq x Nk x D`` tensor).
"""

import torch
from torch import nn

import attnzoo
from attnzoo.scoring import Elementwise


class Laplace(nn.Module):
    """Laplace kernel score: ``s = -||q - k||_1 / bandwidth``."""

    def __init__(self, bandwidth: float = 1.0):
        super().__init__()
        if not bandwidth > 0:
            raise ValueError(f"bandwidth: expected > 0, got {bandwidth!r}")
        self.bandwidth = float(bandwidth)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return -(query.unsqueeze(-2) - key.unsqueeze(-3)).abs().sum(-1) / self.bandwidth

    def fused(self, query: torch.Tensor, key: torch.Tensor) -> Elementwise:
        """``s_ij = sum_h (-1 / bandwidth) |q_ih - k_jh|`` for the fused kernels."""
        w = query.new_full((query.shape[-1],), -1.0 / self.bandwidth)
        return Elementwise(query, key, w, term="abs_diff")


@attnzoo.hookimpl
def attnzoo_register_scores(register):
    register("laplace", Laplace)
