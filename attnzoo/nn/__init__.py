"""Layers built on the zoo: positional encodings and attention pooling (torch only).

* :class:`PositionalEncoding`, :func:`sinusoidal_table`: the Transformer's sinusoids, or a learned table,
  added to ``x (..., N, d)`` (``offset=`` for positions past the first);
* :class:`AttentionPool`: ``(..., N, dim) -> (..., dim)`` with a learned query, through any variant;
* :class:`HierarchicalAttention`: words -> sentences -> document pooling (Yang et al. 2016).
"""

from __future__ import annotations

from .encoding import PositionalEncoding, sinusoidal_table
from .pooling import AttentionPool, HierarchicalAttention

__all__ = ["AttentionPool", "HierarchicalAttention", "PositionalEncoding", "sinusoidal_table"]
