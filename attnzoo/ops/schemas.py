"""Schemas of the ``torch.ops.attnzoo`` operators.

The compiled extension registers these same strings with ``TORCH_LIBRARY`` in
``csrc/ops_schema.cpp``; when it is not built, :mod:`attnzoo.ops` defines them
from here. ``tests/test_ops_schema.py`` checks that both agree.

Conventions shared by every op (``B`` = flattened batch, ``Nq``/``Nk`` = queries/keys):

* ``valid_lens`` int64 ``(B, Nq)``: key ``j`` is valid for query ``i`` iff ``j < valid_lens[b, i]``.
* ``mask`` bool ``(B, Nq, Nk)`` (any strides, broadcast views allowed): True = attend.
* ``pooling``: 0 soft (softmax), 1 hard (arg-max, straight-through), 2 average (uniform).
* ``causal``: key ``j`` valid only if ``j <= i``; ``window >= 0``: only if ``|i - j| <= window``.
* A row with no valid key: ``out`` 0, ``lse`` -inf, ``argmax`` -1, all gradients 0.
* Outputs ``(out, lse, argmax, soft_out)``: ``lse`` is the log-sum-exp of the valid
  scores (log of the count for average), in float32 (float64 for float64 inputs);
  ``argmax`` (hard only, else empty) is the first index of the row maximum;
  ``soft_out`` (hard only, else empty) is the softmax-pooled output that the
  straight-through backward needs.
"""

POOLINGS = {"soft": 0, "hard": 1, "average": 2}

_MASKS = "Tensor? valid_lens, Tensor? mask, int pooling, bool causal, int window"
_SAVED = "Tensor out, Tensor lse, Tensor argmax, Tensor soft_out"
_FWD_OUT = "(Tensor out, Tensor lse, Tensor argmax, Tensor soft_out)"

SCHEMAS = {
    "bilinear_fwd": (
        f"bilinear_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_bias, float scale, {_MASKS}) -> {_FWD_OUT}"
    ),
    "bilinear_bwd": (
        f"bilinear_bwd(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor? key_bias, "
        f"float scale, {_MASKS}, {_SAVED}) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dkey_bias)"
    ),
    "additive_fwd": f"additive_fwd(Tensor a, Tensor b, Tensor w, Tensor v, {_MASKS}) -> {_FWD_OUT}",
    "additive_bwd": (
        f"additive_bwd(Tensor grad_out, Tensor? grad_lse, Tensor a, Tensor b, Tensor w, Tensor v, "
        f"{_MASKS}, {_SAVED}) -> (Tensor da, Tensor db, Tensor dw, Tensor dv)"
    ),
}
