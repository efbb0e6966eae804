"""attnzoo: every classic attention mechanism behind one interface.

>>> import attnzoo, torch
>>> attn = attnzoo.create("additive", query_dim=16, key_dim=16, hidden_dim=32)
>>> q, k, v = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 4)
>>> attn(q, k, v, valid_lens=torch.tensor([3, 7])).shape
torch.Size([2, 5, 4])
"""

from __future__ import annotations

from . import nn
from .errors import AttnzooError, DuplicateNameError, PluginLoadWarning, UnknownNameError
from .hookspecs import hookimpl, hookspec
from .interface import Attention
from .kv_cache import KVCache
from .masks import MaskSpec
from .measures import entropy
from .nn import AttentionPool, HierarchicalAttention, PositionalEncoding
from .prepared import PreparedKeys
from .registry import PluginFailure, Registry, ScoreInfo, VariantInfo, accepted_options, check_options

__version__ = "0.1.0"

_REGISTRY: Registry | None = None


def registry_instance() -> Registry:
    """The process-wide registry (plugins load on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry()
    return _REGISTRY


def list_variants() -> list[str]:
    """Sorted names of every registered variant."""
    return sorted(registry_instance().variants)


def list_scores() -> list[str]:
    """Sorted names of every registered score (each composes with every pooling)."""
    return sorted(registry_instance().scores)


def variant_info(name: str) -> VariantInfo:
    """Name, plugin, one-line description and capabilities of variant ``name``."""
    return registry_instance().variant(name)


def plugin_failures() -> list[PluginFailure]:
    """Plugins that failed to import or register (each also raised a PluginLoadWarning)."""
    reg = registry_instance()
    reg.variants  # noqa: B018 - make sure loading and registration ran
    return list(reg.failures)


def create(name: str, *, backend: str = "auto", **options) -> Attention:
    """Build variant ``name`` with ``options``; ``backend`` is ``"auto"``, ``"fused"`` or ``"reference"``.

    ``backend`` reaches factories that name it (or take ``**kwargs`` when it is not ``"auto"``).
    """
    from .backends import check_backend

    info = variant_info(name)
    check_backend(backend)
    names, var_kw = accepted_options(info.factory)
    if "backend" in names or (var_kw and backend != "auto"):  # a **kwargs factory gets it only when chosen
        options["backend"] = backend
    elif backend != "auto":
        raise ValueError(f"backend: variant {name!r} has only its own implementation, got backend={backend!r}")
    check_options(f"variant {name!r}", info.factory, options)
    attn = info.factory(**options)
    if not isinstance(attn, Attention):
        raise TypeError(f"variant {name!r}: factory returned {type(attn).__name__}, not an attnzoo.Attention")
    return attn


def register(plugin, name: str | None = None) -> str:
    """Register a plugin (object or module with ``@attnzoo.hookimpl`` functions) at run time."""
    return registry_instance().register(plugin, name)


def unregister(plugin=None, name: str | None = None) -> None:
    """Remove a plugin registered at run time (or by entry point), by object or by name."""
    registry_instance().unregister(plugin, name)


def from_torch(mha, **options):
    """A multihead variant holding the weights of a ``torch.nn.MultiheadAttention``."""
    from .multihead import from_torch as _from_torch

    return _from_torch(mha, **options)


def explain(attn: Attention, query, key, value, mask=None, *, valid_lens=None, bias=None) -> str:
    """Which backend ``attn`` would use for these inputs, and why."""
    return attn.explain(query, key, value, mask, valid_lens=valid_lens, bias=bias)


__all__ = [
    "Attention",
    "AttentionPool",
    "HierarchicalAttention",
    "KVCache",
    "PositionalEncoding",
    "nn",
    "AttnzooError",
    "DuplicateNameError",
    "MaskSpec",
    "PluginFailure",
    "PluginLoadWarning",
    "PreparedKeys",
    "Registry",
    "ScoreInfo",
    "UnknownNameError",
    "VariantInfo",
    "create",
    "entropy",
    "explain",
    "from_torch",
    "hookimpl",
    "hookspec",
    "list_scores",
    "list_variants",
    "plugin_failures",
    "register",
    "registry_instance",
    "unregister",
    "variant_info",
]
