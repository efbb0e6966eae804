"""Backends: ``reference`` (eager PyTorch, materialises the weights), ``fused`` (``torch.ops.attnzoo``,
one pass over key blocks) and ``blockwise`` (any score, called on query block x key chunk pairs:
:mod:`attnzoo.blockwise`); ``auto`` picks fused when it can, else blockwise when the reference would
allocate more than ``blockwise.AUTO_ABOVE_BYTES`` for a broadcast score, else the reference.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from . import blockwise, ops
from .masks import MaskSpec
from .ops import reference
from .ops.schemas import PROFILES, TERMS
from .pooling import SPARSE_POOLINGS, masked_softmax, pool, straight_through
from .scoring import Bilinear, Elementwise

BACKENDS = ("auto", "fused", "reference", "blockwise")
# device -> dtypes the extension's kernels were compiled for, as it reports them
_COMPILED_DTYPES = {dev: tuple(getattr(torch, n) for n in names)
                    for dev, names in ops.build_info().get("dtypes", {}).items()}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: got {backend!r}, expected one of {BACKENDS}")
    return backend


def fused_form(score, pooling: str, query: Tensor, key: Tensor) -> Bilinear | Elementwise | None:
    """The kernel family computing ``score`` on these inputs, or None."""
    if pooling == "average":  # scores unused: any bilinear form will do
        return Bilinear(query.new_zeros(*query.shape[:-1], 1), key.new_zeros(*key.shape[:-1], 1))
    fused = getattr(score, "fused", None)
    return fused(query, key) if callable(fused) else None


def select(backend: str, score, pooling: str, query: Tensor, key: Tensor, why: bool = True):
    """``(backend, reason, form)`` for ``score`` x ``pooling`` on these inputs; ``form`` is None for reference.
    ``why=False``: the reason of a chosen fused backend is not spelled out (a call's hot path)."""
    if backend == "reference" or (backend == "blockwise" and pooling == "average"):
        return "reference", f"reference: requested with backend={backend!r}" + (
            " (average pooling reads no scores)" if backend == "blockwise" else ""), None
    if backend == "blockwise":
        return "blockwise", "blockwise: requested with backend='blockwise'", None
    if pooling in SPARSE_POOLINGS:
        if backend == "fused":
            raise ValueError(f"backend: 'fused' has no {pooling} kernel; use 'auto', 'blockwise' or 'reference'")
        return _reference_or_blockwise(f"{pooling} has no fused kernel", pooling, query, key)
    if backend == "auto" and not ops.EXTENSION:
        return _reference_or_blockwise(f"fused ops not compiled ({ops.EXTENSION_STATUS})", pooling, query, key)
    compiled = _compiled_for(query)
    if backend == "fused" and ops.EXTENSION and not compiled and query.device.type in ops.compiled_devices():
        raise ValueError(f"backend: 'fused' has no {query.device.type} kernel for {query.dtype} "
                         f"(it has {', '.join(str(d) for d in _COMPILED_DTYPES[query.device.type])})")
    if backend == "auto" and not compiled:
        return _reference_or_blockwise(f"no compiled kernel for {query.device.type} / {query.dtype} "
                                       f"(compiled: {', '.join(ops.compiled_devices()) or 'none'})",
                                       pooling, query, key)
    form = fused_form(score, pooling, query, key)
    if form is None:
        why = f"score {type(score).__name__} has no fused form here (neither bilinear nor elementwise)"
        if backend == "fused":
            raise ValueError(f"backend: 'fused' is not available: {why}")
        return _reference_or_blockwise(why, pooling, query, key)
    if not isinstance(form, (Bilinear, Elementwise)):
        raise TypeError(f"{type(score).__name__}.fused must return Bilinear, Elementwise or None, got {form!r}")
    check_form(type(score).__name__, form, query, key)
    if not why:
        return "fused", "", form
    family = type(form).__name__.lower() + (f" ({form.term}, {form.profile})" if isinstance(form, Elementwise) else "")
    dev = query.device.type
    where = "compiled kernels" if compiled else f"the ops' eager implementation (no compiled {dev} kernel)"
    return "fused", f"fused: {family} family, {query.device.type} / {query.dtype}, on {where}", form


def _reference_or_blockwise(why: str, pooling: str, query: Tensor, key: Tensor):
    """``auto`` without the fused kernels: blockwise once a broadcast score would need more than
    ``AUTO_ABOVE_BYTES`` on the reference, else the reference."""
    need = blockwise.reference_bytes(query, key)
    if pooling != "average" and need > blockwise.AUTO_ABOVE_BYTES:
        return "blockwise", (f"blockwise: {why}, and the reference would allocate ~{need / 2**20:.0f} MiB for a "
                             f"broadcast score (above {blockwise.AUTO_ABOVE_BYTES // 2**20} MiB)"), None
    return "reference", f"reference: {why}", None


def check_form(name: str, form: Bilinear | Elementwise, query: Tensor, key: Tensor) -> None:
    """The tensors of a score's fused form must fit the inputs: ``(..., Nq, F)`` per query,
    ``(..., Nk, F)`` per key, one feature size ``F``, the inputs' batch dims, dtype and device."""
    if isinstance(form, Bilinear) and form.q is query and form.k is key and form.key_bias is None:
        return  # the inputs themselves (dot products without rotation): they fit by construction
    batch, kbatch, nq, nk = tuple(query.shape[:-2]), tuple(key.shape[:-2]), query.shape[-2], key.shape[-2]
    if isinstance(form, Bilinear):
        parts = {"q": (form.q, (*batch, nq, None)), "k": (form.k, (*kbatch, nk, None))}
        if form.key_bias is not None:
            parts["key_bias"] = (form.key_bias, (*kbatch, nk))
    else:
        parts = {"a": (form.a, (*batch, nq, None)), "b": (form.b, (*kbatch, nk, None)), "w": (form.w, (None,))}
    width = None
    for field, (t, want) in parts.items():
        def what(field=field):
            return f"score {name}: fused() form {type(form).__name__}.{field}"

        if not isinstance(t, Tensor):
            raise TypeError(f"{what()}: expected a tensor, got {type(t).__name__}")
        if t.dtype != query.dtype or t.device != query.device:
            raise TypeError(f"{what()}: {t.dtype} on {t.device}, the inputs are {query.dtype} on {query.device}")
        shape = tuple(t.shape)
        if len(shape) != len(want) or any(w is not None and g != w for g, w in zip(shape, want, strict=True)):
            raise ValueError(f"{what()}: shape {shape}, needs {tuple('F' if w is None else w for w in want)}")
        if None in want:
            width = shape[-1] if width is None else width
            if shape[-1] != width:
                raise ValueError(f"{what()}: feature size {shape[-1]}, the form's other tensors have {width}")


def _compiled_for(query: Tensor) -> bool:
    dev = query.device.type
    return dev in ops.compiled_devices() and query.dtype in _COMPILED_DTYPES.get(dev, ())


def _flat(t: Tensor, n_batch_dims: int) -> Tensor:
    return t if n_batch_dims == 1 else t.reshape(math.prod(t.shape[:n_batch_dims]), *t.shape[n_batch_dims:])


def cpu_kernels(query: Tensor) -> bool:
    """Whether ``query``'s device runs the compiled CPU kernels: they alone return the entropy (soft pooling)
    and draw sampled hard attention (the CUDA kernels refuse both)."""
    return query.device.type == "cpu" and "cpu" in ops.compiled_devices()


def kv_group(query: Tensor, key: Tensor) -> int:
    """Query heads per key head: ``H / G`` for grouped keys ``(..., G, Nk, D)`` of queries ``(..., H, Nq, D)``,
    else 1."""
    return 1 if key.shape[:-2] == query.shape[:-2] else query.shape[-3] // key.shape[-3]


def ungroup(t: Tensor, group: int) -> Tensor:
    """Grouped keys or values ``(..., G, Nk, D)`` repeated to ``(..., G * group, Nk, D)`` (head ``h`` reads
    ``h // group``)."""
    return t if group == 1 else t.repeat_interleave(group, dim=-3)


def run_fused(form: Bilinear | Elementwise, pooling: str, query: Tensor, key: Tensor, value: Tensor,
              spec: MaskSpec, return_weights: bool, entropy: bool = False, seed: int | None = None,
              tau: float = 1.0):
    """Run ``form`` on ``torch.ops.attnzoo``; weights, if asked for, are recomputed from the form.
    Returns ``(out, weights or None)``, and with ``entropy`` (soft pooling, :func:`cpu_kernels`) ``(out, weights, H)``.
    ``seed``: sampled hard attention (the kernels' noise; CPU, no weights). Grouped keys and values
    (:func:`kv_group`) go to the CPU kernels as they are, elsewhere repeated."""
    nb = len(spec.batch)
    group = kv_group(query, key)
    if not cpu_kernels(query):  # the other kernels take neither grouped keys nor a query offset
        form, value = ungroup_form(form, group), ungroup(value, group)
        spec = spec.without_offset()
    valid_lens, mask = spec.flat()
    bias, alibi = spec.flat_positions()
    kw = dict(valid_lens=valid_lens, mask=mask, bias=bias, alibi=alibi, pooling=pooling, causal=spec.causal,
              window=spec.window, entropy=entropy, q_offset=spec.q_offset,
              **({} if seed is None else dict(seed=seed, tau=tau)))
    v = _flat(value, nb)
    if isinstance(form, Bilinear):
        kb = None if form.key_bias is None else _flat(form.key_bias, nb)
        res = ops.bilinear_attention(_flat(form.q, nb), _flat(form.k, nb), v, kb, form.scale, **kw)
    else:
        res = ops.elementwise_attention(_flat(form.a, nb), _flat(form.b, nb), form.w, v,
                                        term=form.term, profile=form.profile, **kw)
    out, argmax = (res[0] if nb == 1 else res[0].reshape(*spec.batch, *res[0].shape[1:])), res[2]
    weights = _fused_weights(form, pooling, query, spec, argmax) if return_weights else None
    if not entropy:
        return out, weights
    return out, weights, res[3].reshape(*spec.batch, spec.nq).to(query.dtype)


def ungroup_form(form: Bilinear | Elementwise, group: int) -> Bilinear | Elementwise:
    """A fused form of grouped keys with its per-key tensors repeated (:func:`ungroup`)."""
    if group == 1:
        return form
    if isinstance(form, Bilinear):
        kb = None if form.key_bias is None else form.key_bias.repeat_interleave(group, dim=-2)
        return replace(form, k=ungroup(form.k, group), key_bias=kb)
    return replace(form, b=ungroup(form.b, group))


def _fused_weights(form, pooling, query, spec, argmax) -> Tensor:
    """The weights of the fused call: the softmax over valid keys of the scores recomputed from the kernel's
    own form (its lse is not reused: where the recomputed scores round differently from the kernel's,
    ``exp(s - lse)`` can exceed 1 or overflow; the row max of the recomputed scores cannot)."""
    valid = spec.dense(query.device)
    if pooling == "average":
        return pool(None, valid, "average", query.dtype)
    form = ungroup_form(form, kv_group(form.q if isinstance(form, Bilinear) else form.a,
                                       form.k if isinstance(form, Bilinear) else form.b))
    if isinstance(form, Bilinear):
        s = reference.bilinear_scores(form.q, form.k, form.key_bias, form.scale)
    else:
        s = reference.elementwise_scores(form.a, form.b, form.w, TERMS[form.term], PROFILES[form.profile])[2]
    p = masked_softmax(spec.add_positions(s), valid).to(query.dtype)
    if pooling != "hard":
        return p
    onehot = reference.onehot_at(argmax.reshape(*spec.batch, spec.nq), p)
    return straight_through(onehot, p)
