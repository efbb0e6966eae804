"""Fake (meta) kernels and autograd formulas of the fused ops (the public wrappers: :mod:`.functional`)."""

from __future__ import annotations

import torch

from .reference import HARD, acc_dtype


def _fwd_fake(x, v, pooling):
    B, Nq = x.shape[0], x.shape[1]
    out = x.new_empty(B, Nq, v.shape[-1])
    lse = x.new_empty(B, Nq, dtype=acc_dtype(x.dtype))
    if pooling == HARD:
        return out, lse, x.new_empty(B, Nq, dtype=torch.int64), x.new_empty(B, Nq, v.shape[-1])
    return out, lse, x.new_empty(0, dtype=torch.int64), x.new_empty(0)


@torch.library.register_fake("attnzoo::bilinear_fwd")
def _bilinear_fwd_fake(q, k, v, key_bias, scale, valid_lens, mask, pooling, causal, window):
    return _fwd_fake(q, v, pooling)


@torch.library.register_fake("attnzoo::elementwise_fwd")
def _elementwise_fwd_fake(a, b, w, v, term, profile, valid_lens, mask, pooling, causal, window):
    return _fwd_fake(a, v, pooling)


@torch.library.register_fake("attnzoo::bilinear_bwd")
def _bilinear_bwd_fake(grad_out, grad_lse, q, k, v, key_bias, *rest):
    # the kernels return contiguous gradients, whatever the inputs' strides
    dkb = key_bias.new_empty(key_bias.shape) if key_bias is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dkb


@torch.library.register_fake("attnzoo::elementwise_bwd")
def _elementwise_bwd_fake(grad_out, grad_lse, a, b, w, v, *rest):
    return a.new_empty(a.shape), b.new_empty(b.shape), w.new_empty(w.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output, n_tensors):
    out, lse, argmax, soft_out = output
    ctx.mark_non_differentiable(argmax, soft_out)
    ctx.save_for_backward(*inputs[:n_tensors], out, lse, argmax, soft_out)
    ctx.rest = inputs[n_tensors:]


def _bilinear_setup(ctx, inputs, output):
    # inputs: q, k, v, key_bias, scale, valid_lens, mask, pooling, causal, window
    _setup(ctx, inputs, output, 4)
    ctx.mask_args = inputs[5:]


def _bilinear_backward(ctx, grad_out, grad_lse, _g_argmax, _g_soft):
    q, k, v, key_bias, out, lse, argmax, soft_out = ctx.saved_tensors
    scale = ctx.rest[0]
    dq, dk, dv, dkb = torch.ops.attnzoo.bilinear_bwd(
        grad_out.contiguous(), grad_lse, q, k, v, key_bias, scale, *ctx.mask_args, out, lse, argmax, soft_out
    )
    return dq, dk, dv, (dkb if key_bias is not None else None), None, None, None, None, None, None


def _elementwise_setup(ctx, inputs, output):
    # inputs: a, b, w, v, term, profile, valid_lens, mask, pooling, causal, window
    _setup(ctx, inputs, output, 4)
    ctx.mask_args = inputs[4:]


def _elementwise_backward(ctx, grad_out, grad_lse, _g_argmax, _g_soft):
    a, b, w, v, out, lse, argmax, soft_out = ctx.saved_tensors
    da, db, dw, dv = torch.ops.attnzoo.elementwise_bwd(
        grad_out.contiguous(), grad_lse, a, b, w, v, *ctx.mask_args, out, lse, argmax, soft_out
    )
    return da, db, dw, dv, None, None, None, None, None, None, None


torch.library.register_autograd("attnzoo::bilinear_fwd", _bilinear_backward, setup_context=_bilinear_setup)
torch.library.register_autograd("attnzoo::elementwise_fwd", _elementwise_backward, setup_context=_elementwise_setup)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "attnzoo: second derivatives through the fused kernels (torch.autograd.grad(..., create_graph=True) "
        "then backward) are not implemented; use backend='reference' for double backward")


for _bwd in ("attnzoo::bilinear_bwd", "attnzoo::elementwise_bwd"):  # an error, never a silently wrong number
    torch.library.register_autograd(_bwd, _no_double_backward)
