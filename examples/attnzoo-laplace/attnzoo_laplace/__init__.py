"""An example third-party attnzoo plugin: the Laplace-kernel score ``s = -|q - k|_1 / b``.

Installing this package (``pip install examples/attnzoo-laplace``) makes ``laplace``
appear in ``attnzoo.list_variants()`` through the ``attnzoo`` entry-point group; it then
composes with every pooling (``attnzoo.create("hard", score="laplace")``) and multi-head.
"""

import torch
from torch import nn

import attnzoo


class Laplace(nn.Module):
    """Laplace kernel score: ``s = -||q - k||_1 / bandwidth``."""

    def __init__(self, bandwidth: float = 1.0):
        super().__init__()
        if not bandwidth > 0:
            raise ValueError(f"bandwidth: expected > 0, got {bandwidth!r}")
        self.bandwidth = float(bandwidth)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return -(query.unsqueeze(-2) - key.unsqueeze(-3)).abs().sum(-1) / self.bandwidth


@attnzoo.hookimpl
def attnzoo_register_scores(register):
    register("laplace", Laplace)
