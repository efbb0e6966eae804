"""Keys prepared once for many calls: ``keys = attn.prepare_keys(key)``, then ``attn(q, keys, value)``.

A score's key-side terms (additive attention's ``W_k k``) are computed at preparation, so each decoder step
computes only the query side. Prepared terms that would be stale are refused: when the keys or the
score's parameters changed in place since (an optimizer step, ``load_state_dict``), prepare again.
Prepare under ``torch.no_grad()`` for inference; prepared with gradients, every call back-propagates
into the one preparation (``retain_graph`` for more than one backward), and the keys' padding must then be
finite (the calls zero the padding's terms, but the projection's weight gradient reads the keys).
"""

from __future__ import annotations

import contextlib
import weakref
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from .validation import zero_unused

# (prepared keys, bool batch + (Nk,) of keys in use or None) while a call that received them runs
_ACTIVE: ContextVar[tuple[PreparedKeys, Tensor | None] | None] = ContextVar("attnzoo_prepared_keys", default=None)


def _versions(score: nn.Module | None, key: Tensor) -> tuple[int, ...]:
    params = () if score is None else tuple(p._version for p in score.parameters())
    return (key._version, *params)


class PreparedKeys:
    """Keys ``(..., Nk, Dk)`` of module ``owner`` with its score's key-side terms (tensors ``(..., Nk, F)`` by name)."""

    def __init__(self, owner: nn.Module, score: nn.Module | None, key: Tensor, terms: dict[str, Tensor]):
        self._owner = weakref.ref(owner)
        self.score, self.key, self.terms = score, key, dict(terms)
        self._at = _versions(score, key)

    def __repr__(self) -> str:
        return f"PreparedKeys(key {tuple(self.key.shape)}, terms {sorted(self.terms)})"

    def check(self, owner: nn.Module) -> Tensor:
        """The raw keys, for a call of ``owner``; an error if they were prepared by another module or are stale."""
        if self._owner() is not owner:
            raise ValueError("key: these PreparedKeys were prepared by another module; call that module's "
                             "prepare_keys")
        if _versions(self.score, self.key) != self._at:
            raise ValueError("key: the keys or the score's parameters changed in place since prepare_keys "
                             "(e.g. an optimizer step); prepare the keys again")
        return self.key


@contextlib.contextmanager
def active(prepared: PreparedKeys, used: Tensor | None):
    """Let ``prepared``'s score read its terms (:func:`key_term`) during a call; ``used``: the keys in use."""
    token = _ACTIVE.set((prepared, used))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def key_term(score: nn.Module, name: str, key: Tensor, compute) -> Tensor:
    """``compute(key)``, or the term ``name`` prepared for these keys when the running call brought them (padding
    zeroed as the call zeroes the keys: when it is not finite and gradients are on)."""
    if torch.compiler.is_compiling():  # (a graph recomputes the term: the context is not traceable)
        return compute(key)
    act = _ACTIVE.get()
    if act is None or act[0].score is not score or name not in act[0].terms or act[0].key.shape != key.shape:
        return compute(key)
    term, used = act[0].terms[name], act[1]
    return term if used is None or not torch.is_grad_enabled() else zero_unused(term, used)
