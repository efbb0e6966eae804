"""Built-in scores ``s(q, k)``; each is also a variant of its name with soft pooling."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import attnzoo
from attnzoo.positions import check_position, rope
from attnzoo.prepared import key_term
from attnzoo.scoring import Bilinear, Elementwise, Score, check_size


class _DotProduct(Score):
    """Shared by the dot-product scores: ``position="rope"`` rotates query and key first
    (:func:`attnzoo.positions.rope`, base ``rope_base``)."""

    same_dim = True

    def __init__(self, position: str | None = None, rope_base: float = 10000.0):
        super().__init__()
        check_position(position, rope_base)
        self.position, self.rope_base = position, rope_base

    def _rotated(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        if self.position is None:
            return query, key
        return rope(query, self.rope_base), rope(key, self.rope_base)

    def extra_repr(self) -> str:
        return "" if self.position is None else f"position={self.position!r}, rope_base={self.rope_base}"


class Dot(_DotProduct):
    """Dot product: ``s = q . k`` (Luong); query and key need the same dim."""

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        query, key = self._rotated(query, key)
        return query @ key.transpose(-1, -2)

    def fused(self, query, key):
        return Bilinear(*self._rotated(query, key))


class ScaledDot(_DotProduct):
    """Scaled dot product: ``s = scale * q . k``, ``scale = 1 / sqrt(d)`` by default (Vaswani et al.; SDPA's
    ``scale``), d = query dim."""

    def __init__(self, scale: float | None = None, position: str | None = None, rope_base: float = 10000.0):
        super().__init__(position, rope_base)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise ValueError(f"scale: expected a number > 0 or None, got {scale!r}")
        self.scale = scale

    def _scale(self, query: Tensor) -> float:
        return 1.0 / math.sqrt(query.shape[-1]) if self.scale is None else float(self.scale)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        rq, rk = self._rotated(query, key)
        return rq @ rk.transpose(-1, -2) * self._scale(query)

    def fused(self, query, key):
        return Bilinear(*self._rotated(query, key), scale=self._scale(query))


class General(Score):
    """General / bilinear: ``s = q^T W k`` with a learned ``W`` (query_dim x key_dim) (Luong)."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.query_dim, self.key_dim = check_size("query_dim", query_dim), check_size("key_dim", key_dim)
        self.W = nn.Parameter(torch.empty(query_dim, key_dim))
        nn.init.normal_(self.W, std=(query_dim * key_dim) ** -0.25)  # scores of the scale of a dot product

    @classmethod
    def example_options(cls, query_dim, key_dim):
        return {"query_dim": query_dim, "key_dim": key_dim}

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return (query @ self.W) @ key.transpose(-1, -2)

    def fused(self, query, key):
        return Bilinear(query @ self.W, key)


class Cosine(Score):
    """Cosine similarity over a temperature: ``s = q . k / (|q| |k| tau)``; same dims."""

    same_dim = True

    def __init__(self, temperature: float = 1.0, eps: float = 1e-8):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        self.temperature, self.eps = float(temperature), float(eps)

    def _unit(self, x: Tensor) -> Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return self._unit(query) @ self._unit(key).transpose(-1, -2) / self.temperature

    def fused(self, query, key):
        return Bilinear(self._unit(query), self._unit(key), scale=1.0 / self.temperature)


class Concat(Score):
    """Concat: ``s = w^T [q; k] = w_q . q + w_k . k`` (Luong's "concat" without a non-linearity).

    Its softmax over keys does not depend on the query at all (``w_q . q`` is constant in
    each row): every query gets the same weights. Additive attention is this plus a tanh.
    """

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.query_dim, self.key_dim = check_size("query_dim", query_dim), check_size("key_dim", key_dim)
        self.w = nn.Linear(query_dim + key_dim, 1, bias=False)

    @classmethod
    def example_options(cls, query_dim, key_dim):
        return {"query_dim": query_dim, "key_dim": key_dim}

    def _parts(self):
        return self.w.weight[0, : self.query_dim], self.w.weight[0, self.query_dim:]

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        wq, wk = self._parts()
        return (query @ wq).unsqueeze(-1) + (key @ wk).unsqueeze(-2)

    def fused(self, query, key):
        _, wk = self._parts()  # the query term cancels in every pooling over keys: its gradient is zero
        no_query = query[..., :1].where(torch.zeros((), dtype=torch.bool, device=query.device), 0.0)  # 0, grad 0
        return Bilinear(no_query, key.new_zeros(*key.shape[:-1], 1), key @ wk)


class Additive(Score):
    """Additive / MLP (Bahdanau): ``s = v^T tanh(W_q q + W_k k)``, hidden size ``hidden_dim``."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int):
        super().__init__()
        self.query_dim, self.key_dim = check_size("query_dim", query_dim), check_size("key_dim", key_dim)
        self.hidden_dim = check_size("hidden_dim", hidden_dim)
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)
        self.w_v = nn.Linear(hidden_dim, 1, bias=False)

    @classmethod
    def example_options(cls, query_dim, key_dim):
        return {"query_dim": query_dim, "key_dim": key_dim, "hidden_dim": 2 * max(query_dim, key_dim)}

    def prepare_key(self, key: Tensor) -> dict[str, Tensor]:
        """The key side ``W_k k`` (:meth:`attnzoo.Attention.prepare_keys`)."""
        return {"W_k k": self.W_k(key)}

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        features = torch.tanh(self.W_q(query).unsqueeze(-2) + key_term(self, "W_k k", key, self.W_k).unsqueeze(-3))
        return self.w_v(features).squeeze(-1)

    def fused(self, query, key):
        return Elementwise(self.W_q(query), key_term(self, "W_k k", key, self.W_k), self.w_v.weight[0], term="tanh")


SCORES = {
    "dot": Dot,
    "scaled_dot": ScaledDot,
    "general": General,
    "cosine": Cosine,
    "concat": Concat,
    "additive": Additive,
}


@attnzoo.hookimpl
def attnzoo_register_scores(register):
    for name, cls in SCORES.items():
        register(name, cls)
