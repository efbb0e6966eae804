"""Schemas of the ``torch.ops.attnzoo`` operators.

The compiled extension registers these same strings with ``TORCH_LIBRARY`` in
``csrc/ops_schema.cpp``; when it is not built, :mod:`attnzoo.ops` defines them
from here. ``tests/test_ops_schema.py`` checks that both agree.

Conventions shared by every op (``B`` = flattened batch, ``Nq``/``Nk`` = queries/keys):

* ``valid_lens`` int64 ``(B, Nq)``: key ``j`` is valid for query ``i`` iff ``j < valid_lens[b, i]``.
* ``mask`` bool ``(B, Nq, Nk)`` (any strides, broadcast views allowed): True = attend.
* ``pooling``: 0 soft (softmax), 1 hard (arg-max, straight-through), 2 average (uniform).
* ``term``, ``profile`` (elementwise ops): :data:`TERMS` (``tanh(a + b)``, ``|a - b|``, ``(a - b)^2``)
  and :data:`PROFILES` (identity; boxcar: 0 for ``r <= 1``, else -inf; epanechnikov:
  ``log(1 - r)`` for ``r < 1``, else -inf).
* ``bias`` float ``(B1, B2, Nq, Nk)`` or ``(B, Nq, Nk)``, each dim its size or 1 (broadcast), ``B1 * B2 = B``
  (batch entry ``b`` reads ``[b // B2, b % B2]``), and ``alibi`` float ``(B,)`` (slopes ``m_b``) add the
  positional terms ``s_ij + bias[b, i, j] - m_b |i - j|`` to every score (after the family's); ``bias_grad``
  (backward): return ``dbias`` (the bias's shape and dtype, summed over its size-1 dims), else an empty tensor.
* ``causal``: key ``j`` valid only if ``j <= i``; ``window >= 0``: only if ``|i - j| <= window``.
* A row with no valid key: ``out`` 0, ``lse`` -inf, ``argmax`` -1, all gradients 0.
* Outputs ``(out, lse, argmax, soft_out, entropy)``: ``lse`` is the log-sum-exp of the valid
  scores (log of the count for average), in float32 (float64 for float64 inputs);
  ``argmax`` (hard only, else empty) is the first index of the row maximum;
  ``soft_out`` (hard only, else empty) is the softmax-pooled output that the
  straight-through backward needs; ``entropy`` (``entropy=True``, soft pooling and the CPU kernels
  only, else empty) is ``H_i = -sum_j p_ij log p_ij`` in lse's dtype (0 for a row with no key),
  from the running ``sum_j exp(s_ij - m_i)(s_ij - m_i)`` of the same pass.
* Backward: ``grad_entropy`` (B, Nq) with the forward's ``saved_entropy`` adds
  ``dH_i/ds_ij = -p_ij (s_ij - lse_i + H_i)`` to ``ds``.
* ``seed`` (hard pooling, CPU kernels; forward and backward alike): sampled hard attention, every score
  becomes ``s'_ij = (s_ij + g_ij) / tau`` (after the positional terms) with the Gumbel noise
  ``g_ij = gumbel(seed, b Nq + i, j)`` of :mod:`attnzoo.sampling`: ``argmax`` is a draw from
  ``softmax(s)``, ``soft_out`` and the backward are the straight-through Gumbel-softmax at temperature ``tau``.
* ``q_offset``: query ``i`` sits at key position ``i + q_offset`` for ``causal`` (``j <= i + q_offset``),
  ``window`` (``|i + q_offset - j| <= window``) and ``alibi`` (``m_b |i + q_offset - j|``); ``Nk - Nq`` is the
  bottom-right alignment of a KV cache. Nonzero: CPU kernels only.
* Grouped keys: the per-key inputs (``k``, ``key_bias`` / ``b``, ``v``) may have a batch ``Bk`` dividing ``B``;
  query batch ``b`` then reads key batch ``b // (B / Bk)`` (grouped-query attention with the heads flattened
  into ``B``, SDPA's ``enable_gqa``), and the key gradients sum over the group. CPU kernels only.
"""

POOLINGS = {"soft": 0, "hard": 1, "average": 2}
# The elementwise family, s_ij = g(sum_h w_h phi(a_ih, b_jh)): its terms phi and outer profiles g.
TERMS = {"tanh": 0, "abs_diff": 1, "sq_diff": 2}
PROFILES = {"identity": 0, "boxcar": 1, "epanechnikov": 2}

_MASKS = "Tensor? valid_lens, Tensor? mask, Tensor? bias, Tensor? alibi, int pooling, bool causal, int window"
_SAVED = "Tensor out, Tensor lse, Tensor argmax, Tensor soft_out"
_FWD_OUT = "(Tensor out, Tensor lse, Tensor argmax, Tensor soft_out, Tensor entropy)"
_ENTROPY_GRAD = "Tensor? grad_entropy=None, Tensor? saved_entropy=None"
_NOISE = "int? seed=None, float tau=1."  # (torch prints the default 1.0 as 1.)
_LAYOUT = "int q_offset=0"

SCHEMAS = {
    "bilinear_fwd": (
        f"bilinear_fwd(Tensor q, Tensor k, Tensor v, Tensor? key_bias, float scale, {_MASKS}, bool entropy=False, "
        f"{_NOISE}, {_LAYOUT}) -> {_FWD_OUT}"
    ),
    "bilinear_bwd": (
        f"bilinear_bwd(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, Tensor? key_bias, "
        f"float scale, {_MASKS}, bool bias_grad, {_SAVED}, {_ENTROPY_GRAD}, {_NOISE}, {_LAYOUT}) -> "
        "(Tensor dq, Tensor dk, Tensor dv, Tensor dkey_bias, Tensor dbias)"
    ),
    "elementwise_fwd": (
        f"elementwise_fwd(Tensor a, Tensor b, Tensor w, Tensor v, int term, int profile, {_MASKS}, "
        f"bool entropy=False, {_NOISE}, {_LAYOUT}) -> {_FWD_OUT}"
    ),
    "elementwise_bwd": (
        f"elementwise_bwd(Tensor grad_out, Tensor? grad_lse, Tensor a, Tensor b, Tensor w, Tensor v, int term, "
        f"int profile, {_MASKS}, bool bias_grad, {_SAVED}, {_ENTROPY_GRAD}, {_NOISE}, {_LAYOUT}) -> "
        "(Tensor da, Tensor db, Tensor dw, Tensor dv, Tensor dbias)"
    ),
}
