"""Test helpers that watch what the library allocates."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any op produces (``floating_only``: floating-point tensors only), to prove
    that a pass keeps no ``Nq x Nk`` tensor: ``with LargestOutput() as probe: ...; probe.largest``."""

    def __init__(self, floating_only: bool = False):
        super().__init__()
        self.floating_only = floating_only
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or not self.floating_only):
                self.largest = max(self.largest, t.numel())
        return out
