"""Multi-head attention over any score x pooling.

``head_h = pool(s(W_q^h q, W_k^h k)) W_v^h v`` for ``h = 1..H`` on ``embed_dim / H``-dim
subspaces; ``out = W_o [head_1; ...; head_H]``. The score module (and its parameters)
is shared by all heads, as in d2l. ``num_kv_heads=G`` (dividing ``H``): grouped-query attention, ``G`` key and
value heads, query head ``h`` reading key head ``h // (H / G)`` (multi-query: ``G = 1``); the CPU kernels read
the ``G`` heads as they are. ``cache=`` (:class:`~attnzoo.kv_cache.KVCache`): incremental decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import backends
from .interface import Attention
from .kv_cache import KVCache
from .masks import MaskSpec, alibi_term, align_offset, structure_mask
from .positions import alibi_slopes
from .registry import accepted_options, build_score
from .validation import check_qkv, mask_spec
from .variants import PooledAttention


class MultiHeadAttention(Attention):
    """``num_heads`` heads of ``score`` x ``pooling`` with input and output projections.

    query ``(..., Nq, embed_dim)``, key ``(..., Nk, kdim)``, value ``(..., Nk, vdim)`` ->
    ``(..., Nq, embed_dim)``; weights ``(..., H, Nq, Nk)``. Score options such as
    ``hidden_dim`` pass through; ``query_dim``/``key_dim`` default to the head dim.
    ``position="alibi"``: ALiBi with the slopes ``2^(-8h/H)`` of head ``h = 1..H``; ``position="rope"``
    goes to the score. ``bias=`` of a call broadcasts to ``(..., H, Nq, Nk)``. ``num_kv_heads``: grouped-query
    attention (see the module's doc); ``align``: ``"top_left"`` or ``"bottom_right"`` (:mod:`attnzoo.masks`).

    ``attn(x_t, cache=cache)`` (self-attention; ``attn(q_t, k_t, v_t, cache=cache)`` likewise) appends this
    call's projected keys and values to ``cache`` and attends over everything cached, query ``i`` of the call at
    position ``len(cache) + i`` (so ``causal=True`` decoding equals the full causal sequence); ``valid_lens``
    ``(batch,)`` then counts the call's real tokens per batch entry. No ``mask`` / ``bias`` with a cache.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, score: str = "scaled_dot", pooling: str = "soft",
                 kdim: int | None = None, vdim: int | None = None, bias: bool = True, causal: bool = False,
                 window: int | None = None, backend: str = "auto", position: str | None = None,
                 num_kv_heads: int | None = None, align: str = "top_left", **score_options):
        super().__init__()
        from . import registry_instance

        for name, val in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, got {val!r}")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads: must divide embed_dim = {embed_dim}, got {num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, int) or num_kv_heads < 1 or (
                num_heads % num_kv_heads):
            raise ValueError(f"num_kv_heads: expected a positive int dividing num_heads = {num_heads}, "
                             f"got {num_kv_heads!r}")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
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
        self.W_k = nn.Linear(self.kdim, num_kv_heads * self.head_dim, bias=bias)
        self.W_v = nn.Linear(self.vdim, num_kv_heads * self.head_dim, bias=bias)
        self.W_o = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.inner = PooledAttention(build_score(info, score_options, caller=MultiHeadAttention), pooling,
                                     causal=causal, window=window, backend=backend, align=align,
                                     alibi=alibi_slopes(num_heads) if position == "alibi" else None)
        self.takes_bias, self.bias_heads = self.inner.takes_bias, (num_heads,)

    @property
    def capabilities(self) -> frozenset:
        return self.inner.capabilities | {"multihead"}

    def output_dim(self, value_dim: int) -> int:
        return self.embed_dim

    def output_from_weights(self, weights: Tensor, value: Tensor) -> Tensor:
        """``W_o [w_1 (W_v^1 v); ...; w_H (W_v^H v)]`` for per-head weights ``(..., H, Nq, Nk)``."""
        v = backends.ungroup(self._heads(self.W_v(value)), self.num_heads // self.num_kv_heads)
        return self.W_o((weights @ v).transpose(-2, -3).flatten(-2))

    def _heads(self, x: Tensor) -> Tensor:  # (..., N, h * d) -> (..., h, N, d)
        return x.unflatten(-1, (x.shape[-1] // self.head_dim, self.head_dim)).transpose(-2, -3)

    def extra_repr(self) -> str:
        kv = f", num_kv_heads={self.num_kv_heads}" if self.num_kv_heads != self.num_heads else ""
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}{kv}"

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
        return self._output(out, spec.with_structure(self.inner.causal, self.inner.window, self.inner.align),
                            query.device), weights, ent

    def _output(self, heads_out: Tensor, spec: MaskSpec, device) -> Tensor:
        """``W_o`` of the heads' outputs; a query with no valid key (by ``spec``) outputs zeros, not W_o's bias."""
        out = self.W_o(heads_out.transpose(-2, -3).flatten(-2))
        if spec.may_have_empty_rows():
            out = out.masked_fill(~spec.dense(device).any(-1, keepdim=True), 0.0)
        return out

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                mask: Tensor | None = None, *, cache: KVCache | None = None, valid_lens: Tensor | None = None,
                bias: Tensor | None = None, return_weights: bool = False, return_entropy: bool = False):
        if cache is None:
            return super().forward(query, key, value, mask, valid_lens=valid_lens, bias=bias,
                                   return_weights=return_weights, return_entropy=return_entropy)
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected an attnzoo.KVCache, got {type(cache).__name__}")
        if mask is not None or bias is not None:
            raise ValueError("cache: a cached call takes valid_lens= (the step's real tokens) only, no mask= / bias=")
        key = query if key is None else key
        value = key if value is None else value
        check_qkv(query, key, value)
        if key.shape[-2] != query.shape[-2]:
            raise ValueError(f"cache: each cached call brings one key per query, got Nq = {query.shape[-2]}, "
                             f"Nk = {key.shape[-2]}")
        step = mask_spec(query, key, None, valid_lens)  # validates the step's lengths
        if step.valid_lens is not None and (step.valid_lens.shape[-1] != 1 or step.valid_lens.shape[:-1] !=
                                            tuple(query.shape[:-2])):
            raise ValueError(f"valid_lens: with cache= one count per batch entry {tuple(query.shape[:-2])}, got "
                             f"shape {tuple(valid_lens.shape)}")
        self._check_dims(query, key, value)
        step_lens = None if step.valid_lens is None else step.valid_lens.squeeze(-1).clamp_max(query.shape[-2])
        old, old_uniform = cache.append(self, self._heads(self.W_k(key)), self._heads(self.W_v(value)), step_lens)
        k, v = cache.view()
        q = self._heads(self.W_q(query))
        spec = self._cached_spec(q, k, cache, old, old_uniform)
        out, weights, ent = self.inner._attend(q, k, v, spec.split_heads(self.num_heads), return_weights,
                                               return_entropy, structured=old_uniform is not None)
        if old_uniform is not None:
            spec = spec.with_structure(self.inner.causal, self.inner.window, self.inner.align)
        out = self._output(out, spec, query.device)
        res = (out, *((weights,) if return_weights else ()), *((ent,) if return_entropy else ()))
        return res[0] if len(res) == 1 else res

    def _cached_spec(self, q: Tensor, k: Tensor, cache: KVCache, old: Tensor, old_uniform: int | None) -> MaskSpec:
        """The masks of a cached call: query ``i`` at position ``old + i`` over the cached keys. Equal lengths: the
        variant's own causal / window / ALiBi with that offset (in the kernels); else each batch entry's range as
        per-query lengths, window and ALiBi as an explicit mask and bias (a cached call has few queries)."""
        batch, n, L = tuple(q.shape[:-3]), q.shape[-2], k.shape[-2]
        inner = self.inner
        if old_uniform is not None:  # (the variant adds its own alignment's offset)
            lens = None if cache.length == L else cache.lengths.unsqueeze(-1)  # this step was ragged
            return MaskSpec(batch, n, L, valid_lens=lens, q_offset=old_uniform - align_offset(inner.align, n, L),
                            finite_values=cache.finite)
        pos = old.unsqueeze(-1) + torch.arange(n, device=q.device)  # batch + (n,): the queries' positions
        lens = cache.lengths.unsqueeze(-1).expand(*batch, n)
        if inner.causal:
            lens = torch.minimum(lens, pos + 1)
        i, j = pos.unsqueeze(-1), torch.arange(L, device=q.device)
        mask = structure_mask(i, j, False, inner.window)  # (causality: in the lengths)
        bias = None
        if inner.alibi_slopes is not None:  # batch + (H, n, L)
            bias = alibi_term(inner.alibi_slopes.to(q.device).view(-1, 1, 1), i.unsqueeze(-3), j, q.dtype)
        return MaskSpec(batch, n, L, valid_lens=lens.contiguous(), mask=mask, bias=bias, finite_values=cache.finite)

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
