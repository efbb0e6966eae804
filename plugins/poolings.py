"""Built-in pooling variants: ``soft``, ``hard``, ``local``, ``average``, ``sparsemax`` and ``entmax15``.

Each takes ``score=`` (default ``scaled_dot``) plus that score's own options, so any
registered score composes with any pooling: ``create("hard", score="cosine")``.
"""

from __future__ import annotations

import attnzoo
from attnzoo.local_p import PredictedCenterAttention
from attnzoo.positions import DEFAULT_ALIBI_SLOPE, check_alibi_slope
from attnzoo.registry import build_score
from attnzoo.sampling import HardSampler
from attnzoo.variants import PooledAttention


def _score_example(score: str):
    def example(query_dim, key_dim, value_dim):
        cls = attnzoo.registry_instance().score(score).cls
        make = getattr(cls, "example_options", None)
        return make(query_dim, key_dim) if callable(make) else {}

    return example


def _pooling(pooling: str, doc: str, default_window: int | None = None, needs_window: bool = False):
    def factory(score: str = "scaled_dot", causal: bool = False, window: int | None = default_window,
                backend: str = "auto", position: str | None = None, alibi_slope: float | None = None,
                align: str = "top_left", **score_options):
        if needs_window and window is None:
            raise ValueError("window: local attention needs window=w (keys with |i - j| <= w), got None")
        check_alibi_slope(position, alibi_slope)
        alibi = None
        if position == "alibi":  # the pooling's; any other position is the score's (rope)
            alibi = DEFAULT_ALIBI_SLOPE if alibi_slope is None else alibi_slope
        elif position is not None:
            score_options["position"] = position
        info = attnzoo.registry_instance().score(score)
        built = build_score(info, score_options, caller=factory)
        return PooledAttention(built, pooling, causal=causal, window=window, backend=backend, alibi=alibi, align=align)

    factory.__doc__ = doc
    return factory


_soft = _pooling("soft", "Soft attention: softmax of the scores over the valid keys.")
_hard_pooling = _pooling("hard", "")


def _hard(score: str = "scaled_dot", causal: bool = False, window: int | None = None, backend: str = "auto",
          position: str | None = None, alibi_slope: float | None = None, sample: bool = False,
          estimator: str = "gumbel", tau: float = 1.0, seed: int | None = None, generator=None,
          baseline_decay: float = 0.9, align: str = "top_left", **score_options):
    """Hard attention: one-hot at the arg-max score (first on ties), straight-through gradient.

    ``sample=True`` (Xu et al. 2015): in training mode each query draws one key from its softmax (Gumbel-max,
    reproducible from ``seed=``, a ``generator=`` or ``torch.manual_seed``); eval mode keeps the arg-max.
    ``estimator="gumbel"``: straight-through Gumbel-softmax at temperature ``tau`` (drawn by the CPU kernels, same
    noise as the reference); ``"reinforce"``: the
    score-function gradient, through ``attn.reinforce_loss(reward)`` added to the loss (moving-average baseline,
    ``baseline_decay``). See :mod:`attnzoo.sampling`."""
    sampler = None
    if sample:
        if backend in ("fused", "blockwise"):
            raise ValueError(f"backend: sampled hard attention draws its keys on the CPU kernels (backend='auto', "
                             f"estimator='gumbel') or on the reference, got backend={backend!r}; use 'auto' or "
                             "'reference'")
        sampler = HardSampler(estimator, tau, seed, generator, baseline_decay)
    elif (estimator, tau, seed, generator) != ("gumbel", 1.0, None, None):
        raise ValueError("sample: estimator=, tau=, seed= and generator= need sample=True")
    attn = _hard_pooling(score, causal, window, backend, position, alibi_slope, align=align, **score_options)
    attn.sampler = sampler
    return attn

_local_window = _pooling("soft", "", default_window=2, needs_window=True)


def _local(score: str = "scaled_dot", causal: bool = False, window: int | None = 2, backend: str = "auto",
           position: str | None = None, alibi_slope: float | None = None, predict_center: bool = False,
           query_dim: int | None = None, center_hidden: int | None = None, align: str = "top_left",
           **score_options):
    """Local attention: softmax over the keys with |i - j| <= window (positions are indices).

    ``predict_center=True`` (Luong et al. 2015, local-p): the window sits around a centre predicted from the
    query, ``p_i = L_i sigmoid(v_p^T tanh(W_p q_i))`` (``query_dim``: the query's dim, ``center_hidden``: W_p's
    width), weights ``softmax(s_ij - (j - p_i)^2 / (2 sigma^2))`` over ``|j - p_i| <= window``, ``sigma =
    window / 2`` (:mod:`attnzoo.local_p`)."""
    info = attnzoo.registry_instance().score(score)
    names, _ = attnzoo.registry.accepted_options(info.cls)
    if query_dim is not None and "query_dim" in names:
        score_options["query_dim"] = query_dim
    if not predict_center:
        if center_hidden is not None:
            raise ValueError("predict_center: center_hidden= needs predict_center=True")
        return _local_window(score, causal, window, backend, position, alibi_slope, align=align, **score_options)
    if query_dim is None:
        raise ValueError("query_dim: predict_center=True needs the query's dim (for W_p), got None")
    for name, val, default in (("causal", causal, False), ("position", position, None),
                               ("alibi_slope", alibi_slope, None), ("align", align, "top_left")):
        if val != default:
            raise ValueError(f"{name}: local-p attention has no {name}= (its window follows the predicted centre)")
    if backend not in ("auto", "reference"):
        raise ValueError(f"backend: local-p gathers each query's window in eager PyTorch, got backend={backend!r}")
    return PredictedCenterAttention(build_score(info, score_options, caller=_local), window, query_dim, center_hidden)



_sparsemax = _pooling("sparsemax", "Sparsemax attention (Martins & Astudillo 2016): w = [s - tau]_+ with sum w = 1, "
                      "exact zeros outside the support.")
_entmax15 = _pooling("entmax15", "1.5-entmax attention (Peters et al. 2019): w = [s/2 - tau]_+^2 with sum w = 1, "
                     "between softmax and sparsemax.")


def _average(causal: bool = False, window: int | None = None, backend: str = "auto", align: str = "top_left"):
    """Average pooling: uniform weights over the valid keys, ignoring the query (d2l's baseline)."""
    return PooledAttention(None, "average", causal=causal, window=window, backend=backend, align=align)


@attnzoo.hookimpl
def attnzoo_register_variants(register):
    example = _score_example("scaled_dot")
    register("soft", _soft, capabilities={"soft"}, example_options=example)
    register("hard", _hard, capabilities={"hard"}, example_options=example)
    register("local", _local, capabilities={"soft", "positional", "window"}, example_options=example)
    register("average", _average, capabilities={"average"})
    register("sparsemax", _sparsemax, capabilities={"sparsemax", "sparse"}, example_options=example)
    register("entmax15", _entmax15, capabilities={"entmax15", "sparse"}, example_options=example)
