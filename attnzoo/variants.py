"""Single-head attention: a score composed with a pooling.

``out_i = sum_j w_ij v_j`` with ``w_i = pooling(s(q_i, k_1..Nk))`` over the valid keys.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import backends, blockwise
from .interface import Attention
from .masks import MaskSpec, check_align
from .measures import soft_weights_entropy, weights_entropy
from .pooling import POOLINGS, SPARSE_POOLINGS, pool
from .positions import alibi_slopes_tensor
from .sparse import ALPHAS, sparse_attend
from .validation import all_finite, check_window

# return_entropy=True where the kernels do not compute the entropy (CUDA, no fused form): soft pooling computes it
# densely up to batch x Nq x Nk this many elements, blockwise above
ENTROPY_DENSE_ELEMENTS = 2**22


def _valid_counts(spec: MaskSpec, device) -> Tensor:
    """``#valid_i``: how many keys each query may attend, ``batch + (Nq,)``, 256 queries at a time."""
    return torch.cat([spec.block(i0, min(i0 + 256, spec.nq), 0, spec.nk, device).sum(-1)
                      for i0 in range(0, spec.nq, 256)], -1)


def zero_attached(*inputs: Tensor) -> Tensor:
    """A scalar 0 whose gradient to each input is zero (finite even if an input holds inf or NaN)."""
    total = sum(t.sum() for t in inputs)
    return total.where(torch.zeros((), dtype=torch.bool, device=total.device), 0.0)


def _check_scores(score: nn.Module, scores, query: Tensor, spec: MaskSpec) -> None:
    """A score's output must be exactly ``batch + (Nq, Nk)`` in the inputs' dtype: no silent broadcast."""
    want = (*spec.batch, spec.nq, spec.nk)
    name = type(score).__name__
    if not isinstance(scores, Tensor) or tuple(scores.shape) != want:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"score {name} returned shape {got}, needs batch + (Nq, Nk) = {want}")
    if scores.dtype != query.dtype:
        raise TypeError(f"score {name} returned dtype {scores.dtype} for {query.dtype} inputs; "
                        "return scores in the inputs' dtype")


def _pool_nonfinite(weights: Tensor, value: Tensor, valid: Tensor) -> Tensor:
    """``out_i = sum_{j valid for i} w_ij v_j`` for values holding inf or NaN: a key that query ``i``
    cannot attend never enters its output (``w @ v`` would add ``0 * inf = NaN``). Materialises
    ``(..., Nq, Nk, Dv)`` for the non-finite entries only: this path is for the rare call that has them."""
    finite = torch.isfinite(value)
    out = weights @ value.where(finite, 0.0)
    bad = value.where(~finite, 0.0).unsqueeze(-3).where(valid.unsqueeze(-1), 0.0)  # zero before the product:
    return out + (weights.unsqueeze(-1) * bad).sum(-2)  # its gradient multiplies by it too


class PooledAttention(Attention):
    """``score`` x ``pooling`` (``soft`` | ``hard`` | ``average`` | ``sparsemax`` | ``entmax15``), optionally causal
    or windowed.

    ``window=w`` keeps keys with ``|i - j| <= w`` (local attention); ``causal`` keeps ``j <= i``; ``align``: where
    query ``i`` sits among the keys for both and for ALiBi, ``"top_left"`` (position ``i``) or ``"bottom_right"``
    (``Nk - Nq + i``, the KV-cache convention; :mod:`attnzoo.masks`).
    ``alibi``: ALiBi slopes ``m`` (a number, or one per head for multi-head inputs ``(..., H, N, D)``):
    ``s_ij -= m |i - j|`` (:mod:`attnzoo.positions`). ``sampler`` (hard pooling; a
    :class:`~attnzoo.sampling.HardSampler`): in training mode each query draws its key from the softmax
    instead of taking the arg-max (on the reference backend); in eval mode it is the arg-max.
    ``backend``: ``"auto"``, ``"fused"``, ``"reference"`` or ``"blockwise"`` (:mod:`attnzoo.backends`).
    """

    def __init__(self, score: nn.Module | None, pooling: str = "soft", *, causal: bool = False,
                 window: int | None = None, backend: str = "auto", alibi=None, sampler=None,
                 align: str = "top_left"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: got {pooling!r}, expected one of {POOLINGS}")
        check_window(window)
        if pooling in SPARSE_POOLINGS and backend == "fused":
            raise ValueError(f"backend: 'fused' has no {pooling} kernel; use 'auto', 'blockwise' or 'reference'")
        if score is None and pooling != "average":
            raise ValueError(f"score: pooling {pooling!r} needs a score, got None")
        if sampler is not None and pooling != "hard":
            raise ValueError(f"sample: drawing a key is hard attention, got pooling={pooling!r}")
        if alibi is not None and pooling == "average":
            raise ValueError("position: 'alibi' shifts scores, and average pooling reads none")
        self.score = score
        self.pooling = pooling
        self.causal = bool(causal)
        self.window = window
        self.align = check_align(align)
        self.backend = backends.check_backend(backend)
        self.takes_bias = pooling != "average"
        self.sampler = sampler
        self.register_buffer("alibi_slopes", None if alibi is None else alibi_slopes_tensor(alibi), persistent=False)

    @property
    def capabilities(self) -> frozenset:
        """Pooling name, ``bfloat16``, ``positional`` (causal, windowed or ALiBi), ``window``, ``alibi``, ``bias``
        (takes ``bias=``), plus the score's own."""
        caps = {self.pooling} | set(getattr(self.score, "capabilities", ()))
        if "compact_support" not in caps:  # bfloat16 rounding moves points across a kernel's support edge
            caps.add("bfloat16")
        if self.causal or self.window is not None or self.alibi_slopes is not None:
            caps.add("positional")
        if self.alibi_slopes is not None:
            caps.add("alibi")
        if self.takes_bias:
            caps.add("bias")
        if self.sampler is not None and self.training:
            caps.add("stochastic")
        if self.window is not None:
            caps.add("window")
        return frozenset(caps)

    def extra_repr(self) -> str:
        parts = [f"pooling={self.pooling!r}", f"backend={self.backend!r}"]
        if self.causal:
            parts.append("causal=True")
        if self.window is not None:
            parts.append(f"window={self.window}")
        if self.align != "top_left":
            parts.append(f"align={self.align!r}")
        if self.alibi_slopes is not None:
            parts.append(f"alibi={self.alibi_slopes.tolist()}")
        return ", ".join(parts)

    def attend(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
               return_weights: bool) -> tuple[Tensor, Tensor | None]:
        return self._attend(query, key, value, spec, return_weights, False)[:2]

    def attend_entropy(self, query: Tensor, key: Tensor, value: Tensor, spec: MaskSpec,
                       return_weights: bool) -> tuple[Tensor, Tensor | None, Tensor]:
        return self._attend(query, key, value, spec, return_weights, True)

    def _attend(self, query, key, value, spec: MaskSpec, return_weights: bool, entropy: bool, structured: bool = True):
        """``(out, weights or None, entropy or None)``; ``structured=False``: ``spec`` already holds this variant's
        causality, window and ALiBi terms (a KV cache's per-entry positions)."""
        score, slopes = self.score, self.alibi_slopes  # (module attributes: looked up once)
        if structured:
            spec = spec.with_structure(self.causal, self.window, self.align).with_alibi(
                None if slopes is None else slopes.to(query.device))
        if score is not None and hasattr(score, "check"):
            score.check(query, key)
        if spec.nq == 0 or spec.nk == 0:  # no (query, key) pair: zeros, by the empty-row policy
            zero = zero_attached(query, key, value, *(() if spec.bias is None else (spec.bias,)))
            out = value.new_zeros(*spec.batch, spec.nq, value.shape[-1]) + zero
            weights = value.new_zeros(*spec.batch, spec.nq, spec.nk) + zero
            return out, (weights if return_weights else None), (weights.sum(-1) if entropy else None)
        if entropy and self.pooling in SPARSE_POOLINGS:  # from the (dense) weights
            out, weights, _ = self._attend(query, key, value, spec, True, False, False)
            return out, (weights if return_weights else None), weights_entropy(weights)
        if entropy and self.pooling != "soft":  # one-hot weights: 0; uniform ones: log #valid (no gradient)
            out, weights, _ = self._attend(query, key, value, spec, return_weights, False, False)
            ent = zero_attached(query, key, value).expand(*spec.batch, spec.nq)
            if self.pooling == "average":
                ent = ent + torch.log(_valid_counts(spec, query.device).clamp_min(1).to(query.dtype))
            return out, weights, ent
        group = backends.kv_group(query, key)  # grouped keys (multi-head num_kv_heads): the CPU kernels read them
        sampled = self.sampler is not None and self.training
        backend, _, form = self._sampled_backend(query, key) if sampled else backends.select(
            self.backend, score, self.pooling, query, key, why=False)
        # inf / NaN values would reach queries that cannot attend them through 0 * inf in w @ v (without masks every
        # query attends every key: nothing to keep apart, and the check's host sync is saved)
        masked = (not spec.is_empty or spec.bias is not None) and not spec.finite_values
        nonfinite = masked and not torch.compiler.is_compiling() and not all_finite(value)
        ent = None
        if entropy and backend == "fused" and backends.cpu_kernels(query) and not nonfinite:
            return backends.run_fused(form, self.pooling, query, key, value, spec, return_weights, True)
        if entropy and backend != "reference" and not (return_weights or nonfinite) and (
                math.prod(spec.batch) * spec.nq * spec.nk > ENTROPY_DENSE_ELEMENTS):
            backend = "blockwise"  # no kernel returns the entropy here; this pass keeps no Nq x Nk tensor
        elif entropy:
            backend = "reference"
        if backend == "fused" and sampled and not (return_weights or nonfinite):  # the kernels draw the keys
            return (*backends.run_fused(form, "hard", query, key, value, spec, False, seed=self.sampler.next_seed(),
                                        tau=self.sampler.tau), None)
        if sampled:
            backend = "reference"
        if group > 1 and backend != "fused":
            key, value = backends.ungroup(key, group), backends.ungroup(value, group)
        if backend == "fused":
            out, weights = backends.run_fused(form, self.pooling, query, key, value, spec, return_weights or nonfinite)
        elif backend == "blockwise" and not (return_weights or nonfinite):  # (weights: the reference's way)
            def check(s, q, k):
                _check_scores(self.score, s, q, MaskSpec(spec.batch, q.shape[-2], k.shape[-2]))

            if self.pooling in SPARSE_POOLINGS:
                return sparse_attend(self.score, check, ALPHAS[self.pooling], query, key, value, spec), None, None
            res = blockwise.attend(self.score, check, self.pooling, query, key, value, spec, entropy)
            return (res[0], None, res[1]) if entropy else (res, None, None)
        else:
            scores = None if self.pooling == "average" else self.score(query, key)
            if scores is not None:
                _check_scores(self.score, scores, query, spec)
                scores = spec.add_positions(scores)
            if entropy:
                weights, ent = soft_weights_entropy(scores, spec.dense(query.device))
            elif sampled:
                weights = self.sampler(scores, spec.dense(query.device))
            else:
                weights = pool(scores, spec.dense(query.device), self.pooling, query.dtype)
            out = weights @ value
        if nonfinite:
            if backend == "fused":  # (the other backends have the keys and values repeated already)
                value = backends.ungroup(value, group)
            out = _pool_nonfinite(weights, value, spec.dense(query.device))
        return out, (weights if return_weights else None), ent

    def reinforce_loss(self, reward: Tensor) -> Tensor:
        """The REINFORCE surrogate of the last training call's draws (``sample=True, estimator="reinforce"``):
        add it to the loss; ``reward (B,)`` is to be maximised (:class:`~attnzoo.sampling.ReinforceBaseline`)."""
        if self.sampler is None:
            raise ValueError("reward: reinforce_loss needs a sampled hard variant (sample=True)")
        return self.sampler.reinforce_loss(reward)

    def _sampled_backend(self, query: Tensor, key: Tensor):
        """``(backend, reason, form)`` of a training call of sampled hard attention: the CPU kernels draw the keys
        (straight-through Gumbel-softmax, backend "auto"), else the reference."""
        if self.sampler.estimator == "gumbel" and backends.cpu_kernels(query):
            backend, why, form = backends.select(self.backend, self.score, "hard", query, key)
            if backend == "fused":
                return backend, f"{why}; sampled hard attention: the kernels draw the keys", form
        why = ("REINFORCE needs each draw's log-probability" if self.sampler.estimator == "reinforce" else
               "no kernel draws here")
        return "reference", f"reference: sampled hard attention in training mode ({why})", None

    def backend_for(self, query: Tensor, key: Tensor, value: Tensor) -> str:
        if self.sampler is not None and self.training:
            return self._sampled_backend(query, key)[1]
        return backends.select(self.backend, self.score, self.pooling, query, key)[1]
