"""The fused ``torch.ops.attnzoo`` operators and their Python wrappers.

The ops come from the compiled extension ``attnzoo._C`` when it is built (C++
kernels for CPU, CUDA kernels when compiled with CUDA). Without it the same ops
are defined here and backed by :mod:`attnzoo.ops.reference`, so code and tests
see one API either way; :data:`EXTENSION` says which is in use.
"""

from __future__ import annotations

import torch

from .._env import flag
from . import reference
from .schemas import POOLINGS, SCHEMAS

_lib = None  # keeps the Python-defined library alive when the extension is absent


def _load_extension():
    """Import ``attnzoo._C``; returns ``(module or None, reason)``."""
    if flag("ATTNZOO_DISABLE_EXTENSION"):
        return None, "disabled by ATTNZOO_DISABLE_EXTENSION"
    try:
        from attnzoo import _C
    except ImportError as exc:
        return None, f"extension not built ({exc})"
    return _C, "built"


_C, EXTENSION_STATUS = _load_extension()
EXTENSION: bool = _C is not None
_BUILD_INFO: dict = dict(_C.build_info()) if EXTENSION else {}
_DEVICES: tuple[str, ...] = (("cpu", "cuda") if _BUILD_INFO.get("cuda") else ("cpu",)) if EXTENSION else ()


def _define_fallback():
    global _lib
    _lib = torch.library.Library("attnzoo", "DEF")
    for name, schema in SCHEMAS.items():
        _lib.define(schema)
        _lib.impl(name, getattr(reference, name), "CompositeExplicitAutograd")


def _fill_missing_devices():
    """Back the ops with the eager implementation on devices the extension was not compiled for."""
    global _lib
    _lib = torch.library.Library("attnzoo", "IMPL")
    for name in SCHEMAS:
        _lib.impl(name, getattr(reference, name), "CUDA")


if not EXTENSION:
    _define_fallback()
elif "cuda" not in _DEVICES:
    _fill_missing_devices()

from . import autograd  # noqa: E402, F401  (registers the fake kernels and autograd formulas)


def build_info() -> dict:
    """What the compiled extension was built with (empty when it is not built)."""
    return dict(_BUILD_INFO)


def compiled_devices() -> tuple[str, ...]:
    """Device types with compiled kernels: ``("cpu",)``, ``("cpu", "cuda")`` or ``()``."""
    return _DEVICES


from .functional import additive_attention, bilinear_attention, elementwise_attention  # noqa: E402

__all__ = [
    "EXTENSION",
    "EXTENSION_STATUS",
    "POOLINGS",
    "additive_attention",
    "bilinear_attention",
    "build_info",
    "compiled_devices",
    "elementwise_attention",
]
