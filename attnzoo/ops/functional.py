"""The public wrappers of the fused ops: keyword arguments and names instead of the schemas' codes."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import forward_ad
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from ..validation import check_window
from .schemas import POOLINGS, PROFILES, TERMS


def _needs_autograd(differentiable) -> bool:
    """Whether a call must go through the ops' autograd formula: gradients are on and an input requires one, or
    the call is being traced (torch.compile) or intercepted by a dispatch mode, which must see the op whole."""
    if torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in differentiable)


def _call(op, differentiable, *args):
    """``op(*args)``; a call that needs no gradient (none of the tensors ``differentiable`` requires one) skips
    the autograd layer (the formula's set-up is Python: ~10 us, as much as the kernel on small inputs).
    Forward-mode AD is refused: the ops have no jvp, and torch would drop the tangents silently."""
    if forward_ad._current_level >= 0:
        raise NotImplementedError(
            f"{op.name()}: forward-mode AD (torch.func.jvp / jacfwd, forward_ad dual tensors) through the fused "
            "kernels is not implemented (it would give zero tangents); use backend='reference'")
    if _needs_autograd(differentiable):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _code(arg: str, name: str, codes: dict) -> int:
    """The schema code of ``name`` in a code list (POOLINGS, TERMS, PROFILES), else a ValueError naming ``arg``."""
    if name not in codes:
        raise ValueError(f"{arg}: got {name!r}, expected one of {sorted(codes)}")
    return codes[name]


def _mask_args(pooling: str, valid_lens, mask, bias, alibi, causal: bool, window: int | None):
    check_window(window)  # (alibi requiring grad is refused where the autograd formula is set up)
    return (valid_lens, mask, bias, alibi, _code("pooling", pooling, POOLINGS), bool(causal),
            -1 if window is None else int(window))


def bilinear_attention(
    q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None = None, scale: float = 1.0, *,
    valid_lens: Tensor | None = None, mask: Tensor | None = None, bias: Tensor | None = None,
    alibi: Tensor | None = None, pooling: str = "soft", causal: bool = False, window: int | None = None,
    entropy: bool = False, seed: int | None = None, tau: float = 1.0, q_offset: int = 0,
) -> tuple[Tensor, ...]:
    """Fused ``pool_j(scale * q_i . k_j + key_bias_j [+ bias_ij - alibi_b |i - j|]) v_j``; 3-D inputs q (B, Nq, D),
    k (Bk, Nk, D), v (Bk, Nk, Dv) with ``Bk`` dividing ``B`` (grouped keys: query batch ``b`` reads ``b // (B / Bk)``).

    Returns ``(out (B, Nq, Dv), lse (B, Nq), argmax (B, Nq) or empty)``, and with ``entropy`` (soft pooling,
    CPU kernels) also ``-sum_j p_ij log p_ij`` (B, Nq), differentiable; the mask and positional arguments
    follow :mod:`attnzoo.ops.schemas`; ``seed`` (hard pooling, CPU kernels): sampled hard attention at
    temperature ``tau`` (straight-through Gumbel-softmax, noise of :mod:`attnzoo.sampling`); ``q_offset``: query
    ``i`` sits at key position ``i + q_offset`` (causal, window, ALiBi; ``Nk - Nq``: bottom-right).
    """
    out, lse, argmax, _, ent = _call(
        torch.ops.attnzoo.bilinear_fwd.default, (q, k, v, key_bias, bias, alibi), q, k, v, key_bias, float(scale),
        *_mask_args(pooling, valid_lens, mask, bias, alibi, causal, window), bool(entropy), seed, float(tau),
        int(q_offset)
    )
    return (out, lse, argmax, ent) if entropy else (out, lse, argmax)


def elementwise_attention(
    a: Tensor, b: Tensor, w: Tensor, v: Tensor, *, term: str = "tanh", profile: str = "identity",
    valid_lens: Tensor | None = None, mask: Tensor | None = None, bias: Tensor | None = None,
    alibi: Tensor | None = None, pooling: str = "soft", causal: bool = False, window: int | None = None,
    entropy: bool = False, seed: int | None = None, tau: float = 1.0, q_offset: int = 0,
) -> tuple[Tensor, ...]:
    """Fused ``pool_j(g(sum_h w_h phi(a_ih, b_jh))) v_j``; a (B, Nq, H), b (Bk, Nk, H), w (H,), v (Bk, Nk, Dv).

    ``term`` phi: ``"tanh"`` (tanh(a + b)), ``"abs_diff"`` (|a - b|), ``"sq_diff"`` ((a - b)^2);
    ``profile`` g: ``"identity"``, ``"boxcar"``, ``"epanechnikov"`` (:mod:`attnzoo.ops.schemas`); grouped keys,
    ``entropy``, ``seed``, ``tau`` and ``q_offset`` as in :func:`bilinear_attention`.
    """
    out, lse, argmax, _, ent = _call(
        torch.ops.attnzoo.elementwise_fwd.default, (a, b, w, v, bias, alibi), a, b, w, v, _code("term", term, TERMS),
        _code("profile", profile, PROFILES),
        *_mask_args(pooling, valid_lens, mask, bias, alibi, causal, window), bool(entropy), seed, float(tau),
        int(q_offset)
    )
    return (out, lse, argmax, ent) if entropy else (out, lse, argmax)


def additive_attention(a: Tensor, b: Tensor, w: Tensor, v: Tensor, **masks) -> tuple[Tensor, Tensor, Tensor]:
    """Fused additive attention ``pool_j(sum_h w_h tanh(a_ih + b_jh)) v_j``: the elementwise tanh member."""
    return elementwise_attention(a, b, w, v, term="tanh", profile="identity", **masks)
