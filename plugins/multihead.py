"""Built-in multi-head variant: any score x pooling, ``num_heads`` heads."""

from __future__ import annotations

import attnzoo
from attnzoo.multihead import MultiHeadAttention


def _multihead(embed_dim: int, num_heads: int, **options):
    """Multi-head attention: per-head score x pooling on projected subspaces, concatenated and projected."""
    return MultiHeadAttention(embed_dim, num_heads, **options)


def _example(query_dim, key_dim, value_dim):
    return {"embed_dim": query_dim, "num_heads": 2, "kdim": key_dim, "vdim": value_dim}


@attnzoo.hookimpl
def attnzoo_register_variants(register):
    register("multihead", _multihead, capabilities={"soft", "multihead", "learnable"}, example_options=_example)
