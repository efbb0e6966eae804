"""Scores ``s(q, k)``: the base class and how a score maps onto the fused kernels.

A score is an ``nn.Module`` with ``forward(query (..., Nq, Dq), key (..., Nk, Dk)) -> (..., Nq, Nk)``.
It may also implement ``fused(query, key)`` returning a :class:`Bilinear` or
:class:`Elementwise` description (the two kernel families), so the fused kernels can compute
it without the ``Nq x Nk`` matrix; scores without it run on the reference backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .ops.schemas import PROFILES, TERMS


@dataclass
class Bilinear:
    """``s_ij = scale * q_i . k_j + key_bias_j``; q (..., Nq, D), k (..., Nk, D), key_bias (..., Nk) or None.

    A query-only term is dropped: it does not change any pooling over keys.
    """

    q: Tensor
    k: Tensor
    key_bias: Tensor | None = None
    scale: float = 1.0


@dataclass
class Elementwise:
    """``s_ij = g(r_ij)``, ``r_ij = sum_h w_h phi(a_ih, b_jh)``; a (..., Nq, H), b (..., Nk, H), w (H,).

    ``term`` phi: ``"tanh"`` (``tanh(a + b)``: additive attention), ``"abs_diff"`` (``|a - b|``: an L1 /
    Laplace score), ``"sq_diff"`` (``(a - b)^2``: Gaussian and compact Nadaraya-Watson kernels). The
    kernels compute ``a - b`` themselves, never expanding the square, so scores of un-centred data
    (inputs near 1e3) keep their precision: pass the raw features and put a per-feature scale in ``w``
    (``w_h c_h^2`` for ``(c_h (a - b))^2``), not in ``a`` and ``b``.
    ``profile`` g: ``"identity"``; ``"boxcar"`` (0 for ``r <= 1``, else -inf: uniform weights inside the
    unit ball); ``"epanechnikov"`` (``log(1 - r)`` for ``r < 1``, else -inf). A row whose keys all score
    -inf gets zero weights.
    """

    a: Tensor
    b: Tensor
    w: Tensor
    term: str = "tanh"
    profile: str = "identity"

    def __post_init__(self):
        for arg, value, codes in (("term", self.term, TERMS), ("profile", self.profile, PROFILES)):
            if value not in codes:
                raise ValueError(f"Elementwise {arg}: got {value!r}, expected one of {tuple(codes)}")


def check_size(name: str, value) -> int:
    """``value`` as a size option (a dimension): a positive int, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int (a dimension), got {value!r}")
    return value


class Score(nn.Module):
    """Base class of the built-in scores (third-party scores need only ``forward``)."""

    #: query and key need the same last dim (dot, cosine, ...)
    same_dim: bool = False

    @classmethod
    def example_options(cls, query_dim: int, key_dim: int) -> dict:
        """Options that build this score for the given sizes."""
        return {}

    #: sizes the score was built for (None = any)
    query_dim: int | None = None
    key_dim: int | None = None

    def check(self, query: Tensor, key: Tensor) -> None:
        """Raise a clear error when the inputs don't fit this score."""
        for name, t, want in (("query", query, self.query_dim), ("key", key, self.key_dim)):
            if want is not None and t.shape[-1] != want:
                raise ValueError(
                    f"{name}: score {type(self).__name__} was built with {name}_dim={want}, "
                    f"got {name} of shape {tuple(t.shape)}"
                )
        if self.same_dim and query.shape[-1] != key.shape[-1]:
            raise ValueError(
                f"key: score {type(self).__name__} compares query and key directly, so they need the same "
                f"last dim; got query {tuple(query.shape)}, key {tuple(key.shape)}"
            )

    def fused(self, query: Tensor, key: Tensor) -> Bilinear | Elementwise | None:
        """How the fused kernels compute this score, or None when they can't."""
        return None

    def extra_repr(self) -> str:
        return ""
