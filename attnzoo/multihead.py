"""Multi-head attention over any score x pooling.

``head_h = pool(s(W_q^h q, W_k^h k)) W_v^h v`` for ``h = 1..H`` on ``embed_dim / H``-dim
subspaces; ``out = W_o [head_1; ...; head_H]``. The score module (and its parameters)
is shared by all heads, as in d2l.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .interface import Attention
from .masks import MaskSpec
from .positions import alibi_slopes
from .registry import accepted_options, build_score
from .variants import PooledAttention


class MultiHeadAttention(Attention):
    """``num_heads`` heads of ``score`` x ``pooling`` with input and output projections.

    query ``(..., Nq, embed_dim)``, key ``(..., Nk, kdim)``, value ``(..., Nk, vdim)`` ->
    ``(..., Nq, embed_dim)``; weights ``(..., H, Nq, Nk)``. Score options such as
    ``hidden_dim`` pass through; ``query_dim``/``key_dim`` default to the head dim.
    ``position="alibi"``: ALiBi with the slopes ``2^(-8h/H)`` of head ``h = 1..H``; ``position="rope"``
    goes to the score. ``bias=`` of a call broadcasts to ``(..., H, Nq, Nk)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, score: str = "scaled_dot", pooling: str = "soft",
                 kdim: int | None = None, vdim: int | None = None, bias: bool = True, causal: bool = False,
                 window: int | None = None, backend: str = "auto", position: str | None = None,
                 **score_options):
        super().__init__()
        from . import registry_instance

        for name, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads: must divide embed_dim = {embed_dim}, got {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        if position is not None and position != "alibi":
            score_options["position"] = position
        info = registry_instance().score(score)
        names, _ = accepted_options(info.cls)
        for dim in ("query_dim", "key_dim"):
            if dim in names:
                score_options.setdefault(dim, self.head_dim)
        self.W_q = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.W_k = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.W_v = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.W_o = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.inner = PooledAttention(build_score(info, score_options, caller=MultiHeadAttention), pooling,
                                     causal=causal, window=window, backend=backend,
                                     alibi=alibi_slopes(num_heads) if position == "alibi" else None)
        self.takes_bias, self.bias_heads = self.inner.takes_bias, (num_heads,)

    @property
    def capabilities(self) -> frozenset:
        return self.inner.capabilities | {"multihead"}

    def output_dim(self, value_dim: int) -> int:
        return self.embed_dim

    def output_from_weights(self, weights: Tensor, value: Tensor) -> Tensor:
        """``W_o [w_1 (W_v^1 v); ...; w_H (W_v^H v)]`` for per-head weights ``(..., H, Nq, Nk)``."""
        return self.W_o((weights @ self._heads(self.W_v(value))).transpose(-2, -3).flatten(-2))

    def _heads(self, x: Tensor) -> Tensor:  # (..., N, H * d) -> (..., H, N, d)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-2, -3)

    def _check_dims(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t, want in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != want:
                raise ValueError(f"{name}: expected last dim {want}, got shape {tuple(t.shape)}")

    def attend(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
               return_weights: bool) -> tuple[Tensor, Tensor | None]:
        return self._attend(query, key, value, spec, return_weights, False)[:2]

    def attend_entropy(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
                       return_weights: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        return self._attend(query, key, value, spec, return_weights, True)

    def _attend(self, query, key, value, spec: MaskSpec, return_weights: bool, entropy: bool):
        self._check_dims(query, key, value)
        q, k, v = self._heads(self.W_q(query)), self._heads(self.W_k(key)), self._heads(self.W_v(value))
        out, weights, ent = self.inner._attend(q, k, v, spec.split_heads(self.num_heads), return_weights, entropy)
        out = self.W_o(out.transpose(-2, -3).flatten(-2))
        spec = spec.with_structure(self.inner.causal, self.inner.window)
        if not spec.is_empty or spec.nk == 0:  # a query with no valid key outputs zeros, not W_o's bias
            out = out.masked_fill(~spec.dense(query.device).any(-1, keepdim=True), 0.0)
        return out, weights, ent

    def backend_for(self, query: Tensor, key: Tensor, value: Tensor) -> str:
        self._check_dims(query, key, value)
        with torch.no_grad():
            q, k, v = self._heads(self.W_q(query)), self._heads(self.W_k(key)), self._heads(self.W_v(value))
        return self.inner.backend_for(q, k, v)


def from_torch(mha: nn.MultiheadAttention, **options) -> MultiHeadAttention:
    """A scaled-dot soft :class:`MultiHeadAttention` holding the weights of ``mha``.

    Same outputs and per-head weights as ``mha`` (in eval mode: attnzoo has no dropout); the new
    module takes batch-first inputs whatever ``mha.batch_first`` is; torch's ``key_padding_mask``
    (True = ignore) becomes ``mask=~key_padding_mask[:, None, :]``. Only ``backend`` may be given.
    """
    if not isinstance(mha, nn.MultiheadAttention):
        raise TypeError(f"mha: expected torch.nn.MultiheadAttention, got {type(mha).__name__}")
    if set(options) - {"backend"}:
        raise ValueError(f"options: from_torch takes only backend (the rest is fixed by mha), got {sorted(options)}")
    if mha.bias_k is not None or mha.add_zero_attn:
        raise NotImplementedError("mha: add_bias_kv and add_zero_attn have no attnzoo equivalent")
    bias = mha.in_proj_bias is not None
    new = MultiHeadAttention(mha.embed_dim, mha.num_heads, kdim=mha.kdim, vdim=mha.vdim, bias=bias, **options)
    E = mha.embed_dim
    if mha._qkv_same_embed_dim:
        wq, wk, wv = mha.in_proj_weight.detach().split(E)
    else:
        wq, wk, wv = (w.detach() for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
    ref = next(mha.parameters())
    new = new.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for lin, w in ((new.W_q, wq), (new.W_k, wk), (new.W_v, wv), (new.W_o, mha.out_proj.weight)):
            lin.weight.copy_(w)
        if bias:
            for lin, b in zip((new.W_q, new.W_k, new.W_v), mha.in_proj_bias.detach().split(E), strict=True):
                lin.bias.copy_(b)
            new.W_o.bias.copy_(mha.out_proj.bias)
    return new
