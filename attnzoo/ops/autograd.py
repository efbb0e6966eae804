"""Fake (meta) kernels and autograd formulas of the fused ops (the public wrappers: :mod:`.functional`)."""

from __future__ import annotations

import torch

from .reference import HARD, acc_dtype


def _fwd_fake(x, v, pooling, entropy):
    B, Nq = x.shape[0], x.shape[1]
    out = x.new_empty(B, Nq, v.shape[-1])
    lse = x.new_empty(B, Nq, dtype=acc_dtype(x.dtype))
    ent = x.new_empty((B, Nq) if entropy else (0,), dtype=acc_dtype(x.dtype))
    if pooling == HARD:
        return out, lse, x.new_empty(B, Nq, dtype=torch.int64), x.new_empty(B, Nq, v.shape[-1]), ent
    return out, lse, x.new_empty(0, dtype=torch.int64), x.new_empty(0), ent


@torch.library.register_fake("attnzoo::bilinear_fwd")
def _bilinear_fwd_fake(q, k, v, key_bias, scale, valid_lens, mask, bias, alibi, pooling, causal, window,
                       entropy=False, seed=None, tau=1.0, q_offset=0):
    return _fwd_fake(q, v, pooling, entropy)


@torch.library.register_fake("attnzoo::elementwise_fwd")
def _elementwise_fwd_fake(a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling, causal, window,
                          entropy=False, seed=None, tau=1.0, q_offset=0):
    return _fwd_fake(a, v, pooling, entropy)


def _dbias_fake(x, bias, bias_grad):
    return bias.new_empty(bias.shape) if bias is not None and bias_grad else x.new_empty(0)


@torch.library.register_fake("attnzoo::bilinear_bwd")
def _bilinear_bwd_fake(grad_out, grad_lse, q, k, v, key_bias, scale, valid_lens, mask, bias, alibi, pooling, causal,
                       window, bias_grad, *saved, grad_entropy=None, saved_entropy=None, seed=None,
                       tau=1.0, q_offset=0):
    # the kernels return contiguous gradients, whatever the inputs' strides
    dkb = key_bias.new_empty(key_bias.shape) if key_bias is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dkb, _dbias_fake(q, bias, bias_grad)


@torch.library.register_fake("attnzoo::elementwise_bwd")
def _elementwise_bwd_fake(grad_out, grad_lse, a, b, w, v, term, profile, valid_lens, mask, bias, alibi, pooling,
                          causal, window, bias_grad, *saved, grad_entropy=None, saved_entropy=None,
                          seed=None, tau=1.0, q_offset=0):
    return (a.new_empty(a.shape), b.new_empty(b.shape), w.new_empty(w.shape), v.new_empty(v.shape),
            _dbias_fake(a, bias, bias_grad))


# The mask group of both ops' inputs (schemas._MASKS): valid_lens, mask, bias, alibi, pooling, causal, window;
# then the forward's entropy flag, seed, tau and q_offset.
_BIAS, _ALIBI, _N_MASKS = 2, 3, 7


def _setup(ctx, inputs, output, n_tensors, masks_at):
    out, lse, argmax, soft_out, ent = output
    alibi = inputs[masks_at + _ALIBI]
    if alibi is not None and alibi.requires_grad:
        raise ValueError("alibi: the slopes are constants (no gradient is computed); pass alibi.detach()")
    ctx.mark_non_differentiable(argmax, soft_out)
    ctx.save_for_backward(*inputs[:n_tensors], out, lse, argmax, soft_out, ent)
    ctx.rest = inputs[n_tensors:masks_at]
    ctx.mask_args = inputs[masks_at:masks_at + _N_MASKS]
    extra = inputs[masks_at + _N_MASKS:]
    ctx.entropy = bool(extra[0]) if extra else False
    seed, tau = (extra[1] if len(extra) > 1 else None), (extra[2] if len(extra) > 2 else 1.0)
    # the backward's keyword arguments: the same noise (redrawn) and the same query positions
    ctx.bwd_kw = {} if seed is None else dict(seed=seed, tau=tau)
    q_offset = extra[3] if len(extra) > 3 else 0
    if q_offset:
        ctx.bwd_kw["q_offset"] = q_offset
    ctx.bias_at = masks_at + _BIAS
    ctx.n_inputs = len(inputs)


def _entropy_grad(ctx, grad_ent, ent) -> dict:
    """The backward's entropy arguments: both when the forward computed the entropy and it has a gradient."""
    return dict(grad_entropy=grad_ent, saved_entropy=ent) if ctx.entropy and grad_ent is not None else {}


def _grads(ctx, tensor_grads, dbias):
    """The backward's return: one entry per input, the bias's gradient at its place."""
    grads = [*tensor_grads] + [None] * (ctx.n_inputs - len(tensor_grads))
    if ctx.needs_input_grad[ctx.bias_at]:
        grads[ctx.bias_at] = dbias
    return tuple(grads)


def _bilinear_setup(ctx, inputs, output):
    # inputs: q, k, v, key_bias, scale, *masks
    _setup(ctx, inputs, output, 4, 5)


def _run_backward(ctx, bwd, grad_out, grad_lse, grad_ent):
    """``(inputs, their gradients, dbias)``: the backward op ``bwd`` on the saved tensors (the op's four tensor
    inputs, then out, lse, argmax, soft_out, entropy)."""
    *inputs, out, lse, argmax, soft_out, ent = ctx.saved_tensors
    *grads, dbias = bwd(grad_out.contiguous(), grad_lse, *inputs, *ctx.rest, *ctx.mask_args,
                        ctx.needs_input_grad[ctx.bias_at], out, lse, argmax, soft_out,
                        **_entropy_grad(ctx, grad_ent, ent), **ctx.bwd_kw)
    return inputs, grads, dbias


def _bilinear_backward(ctx, grad_out, grad_lse, _g_argmax, _g_soft, grad_ent):
    (_, _, _, key_bias), (dq, dk, dv, dkb), dbias = _run_backward(ctx, torch.ops.attnzoo.bilinear_bwd, grad_out,
                                                                  grad_lse, grad_ent)
    return _grads(ctx, (dq, dk, dv, dkb if key_bias is not None else None), dbias)


def _elementwise_setup(ctx, inputs, output):
    # inputs: a, b, w, v, term, profile, *masks
    _setup(ctx, inputs, output, 4, 6)


def _elementwise_backward(ctx, grad_out, grad_lse, _g_argmax, _g_soft, grad_ent):
    _, grads, dbias = _run_backward(ctx, torch.ops.attnzoo.elementwise_bwd, grad_out, grad_lse, grad_ent)
    return _grads(ctx, grads, dbias)


torch.library.register_autograd("attnzoo::bilinear_fwd", _bilinear_backward, setup_context=_bilinear_setup)
torch.library.register_autograd("attnzoo::elementwise_fwd", _elementwise_backward, setup_context=_elementwise_setup)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "attnzoo: second derivatives through the fused kernels (torch.autograd.grad(..., create_graph=True) "
        "then backward) are not implemented; use backend='reference' for double backward")


for _bwd in ("attnzoo::bilinear_bwd", "attnzoo::elementwise_bwd"):  # an error, never a silently wrong number
    torch.library.register_autograd(_bwd, _no_double_backward)
