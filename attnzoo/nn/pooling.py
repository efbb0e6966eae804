"""Attention pooling of sequences with a learned query, and its hierarchy (Yang et al. 2016's HAN).

:class:`AttentionPool`: ``pool(x) = sum_j w_j x_j`` with ``w = attn weights of the learned context vector u
over the valid rows of x``; for the default ``"additive"`` variant, ``w_j = softmax_j(v^T tanh(W_q u + W_k x_j))``
(Bahdanau's score; HAN's ``u_w``). :class:`HierarchicalAttention` pools words into sentences, then sentences
into a document (one :class:`AttentionPool` per level).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..interface import Attention
from ..validation import LENGTH_DTYPES

#: options that name the width of an input or of a projection: set to ``dim`` when the variant's
#: ``example_options`` lists them
_DIM_OPTIONS = ("query_dim", "key_dim", "value_dim", "hidden_dim", "embed_dim", "kdim", "vdim")


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim: expected an int >= 1 (the width of the pooled rows), got {dim!r}")
    return dim


def default_options(variant: str, dim: int, options: dict) -> dict:
    """``options`` completed with the widths ``variant`` needs to pool rows of width ``dim``.

    Starts from the variant's ``example_options(dim, dim, dim)`` (for a pooling variant given ``score=``,
    that score's), sets each width option among them (``query_dim``, ``key_dim``, ``hidden_dim``,
    ``embed_dim``, ...) to ``dim``, ``num_heads`` to 1 when the example's does not divide ``dim``;
    ``options`` the caller gave win.
    """
    import attnzoo

    info = attnzoo.variant_info(variant)
    names, _ = attnzoo.accepted_options(info.factory)
    if "score" in names and "score" in options:  # soft / hard / local with a score of the caller's choice
        cls = attnzoo.registry_instance().score(options["score"]).cls
        make = getattr(cls, "example_options", None)
        example = make(dim, dim) if callable(make) else {}
    else:
        example = info.example_options(dim, dim, dim)
    filled = {k: (dim if k in _DIM_OPTIONS else v) for k, v in example.items()}
    heads = filled.get("num_heads")
    if isinstance(heads, int) and heads > 0 and dim % heads:
        filled["num_heads"] = 1
    return {**filled, **options}


class AttentionPool(nn.Module):
    """Pool ``x (..., N, dim)`` into ``(..., dim)`` with a learned query ``u (dim,)`` (``N(0, 1/dim)`` init).

    ``pool(x) = attn(u, x, x)``: for single-head variants the weighted sum ``sum_j w_j x_j``, ``w`` the variant's
    weights of ``u`` over the valid rows (soft ones: ``w_j = softmax_j s(u, x_j)``; multi-head ones project, see
    their docs), through any registered ``variant`` built with ``options`` (widths filled in by
    :func:`default_options`; the output width must stay ``dim``; positional variants see ``u`` at position 0).
    ``forward(x, mask=None, *, valid_lens=None, return_weights=False)``: ``mask`` bool ``(..., N)`` (True = keep),
    ``valid_lens`` integer ``(...)`` (rows ``j >= valid_lens`` are padding, whose values never reach the output);
    weights ``(..., N)`` (multi-head: ``(..., H, N)``). A sequence with no valid row pools to zeros.
    """

    def __init__(self, dim: int, variant: str = "additive", **options):
        super().__init__()
        import attnzoo

        self.dim = _check_dim(dim)
        if not isinstance(variant, str):
            raise TypeError(f"variant: expected a registered variant's name (str), got {type(variant).__name__}")
        self.variant = variant
        self.attn: Attention = attnzoo.create(variant, **default_options(variant, dim, options))
        if self.attn.output_dim(dim) != dim:
            raise ValueError(f"variant: {variant!r} with options {options} maps rows of width dim = {dim} to width "
                             f"{self.attn.output_dim(dim)}; pooling needs the width kept (set its width options)")
        self.query = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, x: Tensor, mask: Tensor | None = None, *, valid_lens: Tensor | None = None,
                return_weights: bool = False):
        _check_rows("x", x, self.dim, self.query)
        batch = tuple(x.shape[:-2])
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
                raise TypeError(f"mask: expected a bool tensor (..., N) (True = keep), got {got}")
            if mask.dim() < 1 or mask.shape[-1] not in (1, x.shape[-2]):
                raise ValueError(f"mask: expected shape (..., N) with N = {x.shape[-2]} (x's rows), "
                                 f"got {tuple(mask.shape)}")
            mask = mask.unsqueeze(-2)  # (..., 1, N): the one query's row
        if valid_lens is not None:
            valid_lens = _check_lens("valid_lens", valid_lens, batch, x.device)
        query = self.query.expand(*batch, 1, self.dim)
        res = self.attn(query, x, x, mask, valid_lens=valid_lens, return_weights=return_weights)
        if not return_weights:
            return res.squeeze(-2)
        out, weights = res
        return out.squeeze(-2), weights.squeeze(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, variant={self.variant!r}"


class HierarchicalAttention(nn.Module):
    """Yang et al.'s hierarchical attention pooling: words -> sentences -> document (``levels=2``).

    ``x (B, S, T, dim)`` (in general ``(*batch, N_levels, ..., N_1, dim)``, any number of batch dims):
    level 1 pools each sentence's ``T`` words, ``s_b,i = pool_1(x_b,i)`` ``(B, S, dim)``, level 2 the
    sentences, ``d_b = pool_2(s_b)`` ``(B, dim)``; one :class:`AttentionPool` (``variant``, ``options``) per
    level (``variant``: one name, or one per level innermost first, e.g. ``("additive", "average")``).
    ``valid_lens``: one length tensor (or None) per level, innermost first: ``(word_lens (B, S),
    sentence_lens (B,))``; padded sentences count as empty (their words are never read). ``encoders``: optional
    modules (or None), one per level, applied to that level's rows ``(..., N, dim) -> (..., N, dim)`` before
    its pooling, padded rows zeroed first. ``return_weights=True`` also returns each level's weights,
    innermost first: ``((B, S, T), (B, S))``, zero at padding.
    """

    def __init__(self, dim: int, levels: int = 2, variant: str | Sequence[str] = "additive", *,
                 encoders: Sequence[nn.Module | None] | None = None, **options):
        super().__init__()
        _check_dim(dim)
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels: expected an int >= 1 (pooling steps, 2 = words -> sentences -> document), "
                             f"got {levels!r}")
        self.dim, self.levels = dim, levels
        variants = [variant] * levels if isinstance(variant, str) else list(variant)
        if len(variants) != levels or not all(isinstance(v, str) for v in variants):
            raise ValueError(f"variant: expected a variant's name or {levels} names (one per level, innermost "
                             f"first), got {variant!r}")
        self.pools = nn.ModuleList(AttentionPool(dim, v, **options) for v in variants)
        if encoders is not None:
            encoders = list(encoders)
            if len(encoders) != levels or not all(e is None or isinstance(e, nn.Module) for e in encoders):
                raise ValueError(f"encoders: expected {levels} modules or None (one per level, innermost first), "
                                 f"got {encoders!r}")
            self.encoders = nn.ModuleList(nn.Identity() if e is None else e for e in encoders)
        else:
            self.encoders = None

    def forward(self, x: Tensor, *, valid_lens: Sequence[Tensor | None] | None = None, return_weights: bool = False):
        _check_rows("x", x, self.dim, self.pools[0].query, min_dim=self.levels + 1,
                    shape=f"(*batch, {', '.join(f'N_{i}' for i in range(self.levels, 0, -1))}, dim={self.dim})")
        lens = self._lengths(x, valid_lens)
        h, weights = x, []
        for i, pool in enumerate(self.pools):
            if self.encoders is not None:
                if lens[i] is not None:
                    rows = torch.arange(h.shape[-2], device=h.device)
                    h = h.masked_fill(~(rows < lens[i].unsqueeze(-1)).unsqueeze(-1), 0.0)
                shape = h.shape
                h = self.encoders[i](h)
                if not isinstance(h, Tensor) or h.shape != shape:
                    got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                    raise ValueError(f"encoders[{i}]: must map rows {tuple(shape)} to the same shape, got {got}")
            res = pool(h, valid_lens=lens[i], return_weights=return_weights)
            if return_weights:
                h, w = res
                weights.append(w)
            else:
                h = res
        return (h, tuple(weights)) if return_weights else h

    def _lengths(self, x: Tensor, valid_lens) -> list[Tensor | None]:
        """Each level's lengths, a row of an outer level's padding counting as empty (outermost first)."""
        if valid_lens is None:
            return [None] * self.levels
        if isinstance(valid_lens, Tensor) or not isinstance(valid_lens, Sequence) or len(valid_lens) != self.levels:
            got = f"a tensor of shape {tuple(valid_lens.shape)}" if isinstance(valid_lens, Tensor) else repr(valid_lens)
            raise ValueError(f"valid_lens: expected a sequence of {self.levels} length tensors or None (one per level, "
                             f"innermost first, e.g. (word_lens (B, S), sentence_lens (B,))), got {got}")
        lens: list[Tensor | None] = list(valid_lens)
        outer: Tensor | None = None  # which rows of the level above are real: shape of this level's lengths
        for i in reversed(range(self.levels)):
            batch, n = tuple(x.shape[: x.dim() - 2 - i]), x.shape[x.dim() - 2 - i]
            if lens[i] is not None:
                lens[i] = _check_lens(f"valid_lens[{i}]", lens[i], batch, x.device)
            elif outer is not None:
                lens[i] = torch.full(batch, n, dtype=torch.int64, device=x.device)
            if lens[i] is None:
                continue
            if outer is not None:
                lens[i] = lens[i].masked_fill(~outer, 0)
            outer = torch.arange(n, device=x.device) < lens[i].unsqueeze(-1)
        return lens

    def extra_repr(self) -> str:
        return f"dim={self.dim}, levels={self.levels}"


def _check_rows(name: str, x, dim: int, param: Tensor, min_dim: int = 2, shape: str | None = None) -> None:
    shape = shape or f"(..., N, dim={dim})"
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a float tensor {shape}, got {got}")
    if x.dim() < min_dim or x.shape[-1] != dim:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    if x.dtype != param.dtype or x.device != param.device:
        raise TypeError(f"{name}: {x.dtype} on {x.device}, the module's parameters are {param.dtype} on "
                        f"{param.device}; move one to the other (module.to(x.dtype) / x.to(...))")


def _check_lens(name: str, lens, batch: tuple, device) -> Tensor:
    if not isinstance(lens, Tensor):
        lens = torch.as_tensor(lens, device=device)
    if lens.dtype not in LENGTH_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor of lengths, got dtype {lens.dtype}")
    if tuple(lens.shape) != batch:
        raise ValueError(f"{name}: expected shape {batch} (one length per sequence), got {tuple(lens.shape)}")
    if lens.device != torch.device(device):
        raise ValueError(f"{name}: on device {lens.device}, x on {device}")
    return lens


__all__ = ["AttentionPool", "HierarchicalAttention", "default_options"]
