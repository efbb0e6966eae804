"""Property-based tests (hypothesis): the built-in variants on both backends against a float64 oracle.

Each example draws a built-in variant and its options (soft / hard / local / average pooling or a score's own
variant, with every built-in score and its options; multi-head with its own), 0-2 leading batch dims, Nq, Nk,
the dims, the dtype, the masks (none, ``valid_lens`` per batch element or per query with zeros, a bool mask
with fully masked rows, both), causal / window, and the inputs' offsets (up to 1e3) and scales (1e-3..1e2).
On the reference backend and, when the extension is compiled, the fused one, it checks:

1. agreement with the float64 oracle: the same module (same parameters, cast with ``.to(torch.float64)``) on
   the reference backend, run on the inputs cast to float64 (exact casts), within the tolerance below;
2. the weights are distributions: >= 0, rows over the valid keys sum to 1, rows without a valid key are all
   zero, one-hot (hard), uniform (average), exactly zero outside the causal / window band and on masked keys;
3. ``out = w @ v`` (single head);
4. the empty-row policy: a query with no valid key has a zero output and zero weights, and a linear
   functional of those rows alone has a zero gradient with respect to everything; no NaN or inf anywhere;
5. finite gradients of query, key, value and every parameter after backward of a random linear functional
   of the output and the weights.

Checks 2, 4 and 5 run on the inputs as drawn, however large the scores. Check 1 (and 3, whose fused-backend
tolerance is check 1's) needs a result that float32 can determine: when the bound below says the float32
weights are not determined to 5% (``TARGET``; scores of ~1e4 and more), query and key are scaled by a power of
two (exact) until it is, and the example notes it. A quarter of the examples round query and key to integers,
so that dot products are exact and ties are exact: hard pooling must then pick the first maximal key.

Tolerance of checks 1 and 3 (all in float64 from the oracle's own numbers; eps = ``finfo(dtype).eps``)
-------------------------------------------------------------------------------------------------------
* Score error. A float32 sum of products is within n eps sum|terms| of the exact one (Higham's gamma_n), so
  ``|fl(s_ij) - s_ij| <= n eps A_ij`` with ``A`` the sum of |terms| of the formula the backend evaluates and
  ``n`` the longest chain of roundings (D_q + D_k + hidden + 8; multi-head: its projection length + head dim
  + hidden + 8). Per score, with ``|q|, |k|`` (single head: the inputs, exact; multi-head: the projections'
  own sum of |terms|, ``|W||x| + |b|``, which also bounds their rounding error):
    dot ``|q| |k|^T``; scaled_dot the same / sqrt(d); general ``(|q| |W|) |k|^T``; concat ``|q||w_q| + |k||w_k|``;
    cosine ``(|u_q| |u_k|^T + [multi-head] 2 sum|q|/||q|| + 2 sum|k|/||k||) / tau`` (u = unit vectors);
    additive ``sum_h |w_h| ((1 - tanh^2)(|W_q||q| + |W_k||k|) + 4)`` (tanh' damps the pre-activation error);
    Nadaraya-Watson Gaussian ``|s|`` (the reference squares exact differences) plus, in multi-head,
    ``w^2 sum_d |q_d - k_d| (|q|_d + |k|_d)``; both backends square exact differences (the fused kernels'
    elementwise ``(a - b)^2`` term, ``w^2`` in its weights); Epanechnikov ``A_u / (1 - u^2)``
    with ``A_u`` the bound of ``u^2``; boxcar, constant and average pooling 0; dot on integer inputs whose
    sum of |terms| is below 2^24 (float64: 2^53) 0, as it is exact.
* Softmax. The score errors of row i are within ``Delta_j = eps (n A_ij + 2 |s_ij - m_i| + 4)`` (the second
  term: rounding of ``s - max`` before exp; the third: exp's ulps). Integrating ``dw/dt = w (delta - <delta>_w)``
  along ``s + t delta`` (with ``w_l(t) <= w_l e^(Delta_l + Dbar)`` by Jensen) gives, for any size of Delta,
      ``|dw_j| <= W_j = e^(2 Dbar) u_j sum_{l != j} u_l (Delta_j + Delta_l)``,
      ``u_l = w_l e^(Delta_l)``, ``Dbar = sum_l w_l Delta_l``  (~ 2 w_j (1 - w_j) Delta_j: one-hot rows are stable),
      ``|dout_ic| <= sum_j W_j |v_jc - o_ic|``  (the perturbation of a softmax sums to zero),
  plus the normalisation and accumulation rounding ``(Nk + 4) eps w_j`` and ``(Nk + 4) eps sum_j w_j |v_jc|``.
  The fused backend returns weights recomputed as ``exp(s' - lse)`` from scores rounded apart from its kernel's
  log-sum-exp (renormalised or not): they add ``e^Dbar u_j (e^(2 Delta_j) - 1 + eps (2|m_i| + |s_ij - m_i|))``.
  Hard pooling: no score error moves a one-hot row unless two top scores are within ``C (n eps A)`` of each
  other (then the example is skipped, defect (b) below), so weights must be equal and the output is within
  rounding; average pooling: rounding only. Multi-head adds the value projection (``n_v eps |W_v||v|``) and
  ``W_o``: ``|W_o| tol_heads + (E + 2) eps (|W_o| |heads| + |b_o|)``.
* tolerance = C x bound (+ a few ``tiny`` for underflow), ``C = 2``: the bound is first order in gamma_n and
  the vectorised exp / tanh may be off by some ulps. float64 examples use the same formula with float64's eps
  (~1e-13 relative for moderate scores, ~1e-9 only for scores ~1e5). Measured over 4000 random examples, the
  largest error is ~0.13 of its tolerance (worst-case gamma_n against the typical sqrt(n) growth).

Excluded on purpose (each counted by ``hypothesis.event``, see ``--hypothesis-show-statistics``):
(a) (fixed: fused Nadaraya-Watson once expanded the square and cancelled in float32 on offset data; it now
    runs on every example, compact kernels included);
(b) ill-conditioned examples, where the oracle itself says float32 cannot decide: near-ties of the top scores
    of hard pooling, a key at the edge of a compact kernel's support, or weights that stay undetermined after
    the rescaling above; they are skipped with ``hypothesis.assume`` (about 3% of the examples);
(c), (d) found by this suite: at scores ~1e9 in float32 the fused backend's weights are NaN and its gradients
    non-finite (exp of a score minus a log-sum-exp rounded apart overflows); only where the score error bound
    allows it (2 Delta >= 80) are the fused weights and gradients left unchecked; strict xfail tests
    reproduce both, so that a fix shows.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

import attnzoo
from attnzoo import ops
from attnzoo.multihead import MultiHeadAttention
from attnzoo.variants import PooledAttention

C = 2.0
TARGET = 0.05  # the float32 weights must be determined to this (L1 per row) for the oracle comparison
MAX_EXAMPLES = 800
BACKENDS = ("reference", "fused") if ops.EXTENSION else ("reference",)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
SCORES = ("scaled_dot", "dot", "general", "cosine", "concat", "additive", "nadaraya_watson")
SAME_DIM = ("scaled_dot", "dot", "cosine", "nadaraya_watson")
COMPACT = ("boxcar", "epanechnikov")  # compact support: -inf scores outside it
F64 = torch.float64


@dataclass
class Case:
    """One drawn example: everything needed to rebuild the module and its inputs."""

    variant: str
    options: dict
    batch: tuple = ()
    nq: int = 1
    nk: int = 1
    dq: int = 1
    dk: int = 1
    dv: int = 1
    dtype: str = "float32"
    mask: str = "none"  # none | lens | lens_per_query | bool | both
    layout: str = "full"  # bool mask shape: full (batch, Nq, Nk) | keys (batch, 1, Nk) | unbatched (Nq, Nk)
    keep: float = 0.7  # probability that a bool-mask entry attends
    blank: bool = False  # blank some rows of the bool mask (all keys masked)
    zero_len: bool = False  # force a length of 0
    q_in: tuple = (0.0, 0)  # (offset, log10 scale) of query, key, value
    k_in: tuple = (0.0, 0)
    v_in: tuple = (0.0, 0)
    shared_offset: bool = True  # key offset = query offset (same dims): data far from 0 but close together
    integer: bool = False  # round query and key to integers: exact dot products, so exact ties (hard: first wins)
    seed: int = 0
    notes: list = field(default_factory=list, repr=False, compare=False)


# --------------------------------------------------------------------------------------------- strategies
DIMS = st.integers(1, 16)
OFFSETS = st.sampled_from([0.0, 0.0, 1.0, 1e3, 30.0, -1e3])
LOG_SCALES = st.sampled_from([0, -3, 2, -1, 1])


@st.composite
def _score_options(draw, score: str, head_dim: int, q_log_scale: int) -> dict:
    if score == "cosine":
        return {"temperature": draw(st.sampled_from([1.0, 0.1, 0.5, 2.0, 0.02]))}
    if score == "additive":
        return {"hidden_dim": draw(st.integers(1, 16))}
    if score == "nadaraya_watson":
        # the kernel width relative to the spread of the data (d2l's regime), whatever the scale
        rel = draw(st.sampled_from([1.0, 0.3, 3.0, 0.1]))
        return {"kernel": draw(st.sampled_from(["gaussian", "boxcar", "epanechnikov", "constant"])),
                "w": rel / (10.0 ** q_log_scale * math.sqrt(2 * head_dim)), "learnable": draw(st.booleans())}
    return {}


@st.composite
def cases(draw) -> Case:
    kind = draw(st.sampled_from(["soft", "hard", "local", "average", "score", "multihead"]))
    q_in, k_in, v_in = (draw(st.tuples(OFFSETS, LOG_SCALES)) for _ in range(3))
    causal = draw(st.booleans())
    window = draw(st.integers(0, 6)) if kind == "local" else draw(st.one_of(st.none(), st.integers(0, 6)))
    if kind == "multihead":
        heads, head_dim = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        embed = heads * head_dim
        kdim, vdim = draw(st.one_of(st.none(), DIMS)), draw(st.one_of(st.none(), DIMS))
        score = draw(st.sampled_from(SCORES))
        options = {"embed_dim": embed, "num_heads": heads, "kdim": kdim, "vdim": vdim, "bias": draw(st.booleans()),
                   "score": score, "pooling": draw(st.sampled_from(["soft", "hard", "average"])),
                   "causal": causal, "window": window, **draw(_score_options(score, head_dim, q_in[1]))}
        dq, dk, dv = embed, kdim or embed, vdim or embed
    else:
        score = None if kind == "average" else draw(st.sampled_from(SCORES))
        dq = draw(DIMS)
        dk = dq if score in SAME_DIM else draw(DIMS)
        dv = draw(DIMS)
        options = {"causal": causal}
        if kind != "score":
            options["window"] = window
        if score is not None:
            if kind != "score":
                options["score"] = score
            if score in ("general", "concat", "additive"):
                options.update(query_dim=dq, key_dim=dk)
            options.update(draw(_score_options(score, dq, q_in[1])))
    variant = score if kind == "score" else kind
    return Case(
        variant=variant, options=options,
        batch=tuple(draw(st.lists(st.integers(1, 3), max_size=2))),
        nq=draw(st.integers(1, 24)), nk=draw(st.integers(1, 24)), dq=dq, dk=dk, dv=dv,
        dtype=draw(st.sampled_from(["float32", "float32", "float64"])),
        mask=draw(st.sampled_from(["none", "lens", "lens_per_query", "bool", "both"])),
        layout=draw(st.sampled_from(["full", "keys", "unbatched"])), keep=draw(st.sampled_from([0.7, 0.3, 0.95])),
        blank=draw(st.booleans()), zero_len=draw(st.booleans()),
        q_in=q_in, k_in=k_in, v_in=v_in, shared_offset=draw(st.booleans()),
        integer=draw(st.sampled_from([False, False, False, True])), seed=draw(st.integers(0, 2**32 - 1)),
    )


# ------------------------------------------------------------------------------------------------ helpers
def _note(case: Case, msg: str) -> None:
    case.notes.append(msg)
    if currently_in_test_context():
        note(msg)


def _event(msg: str) -> None:
    if currently_in_test_context():
        event(msg)


def _assume(case: Case, ok: bool, why: str) -> None:
    """Skip an ill-conditioned example (hypothesis.assume); a hand-picked case must not need it."""
    if ok:
        return
    _event(f"skipped: {why}")
    if currently_in_test_context():
        assume(False)
    pytest.fail(f"hand-picked case is ill-conditioned ({why}): {case}")


def _inner(attn) -> PooledAttention:
    return attn.inner if isinstance(attn, MultiHeadAttention) else attn


def _set_backend(attn, backend: str):
    for m in attn.modules():
        if isinstance(m, PooledAttention):
            m.backend = backend
    return attn


def _build(case: Case):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed % 2**31)
        attn = attnzoo.create(case.variant, backend="reference", **case.options)
    return attn.to(DTYPES[case.dtype])


def _inputs(case: Case):
    """query, key, value (in the case's dtype) and the mask arguments, from the case's seed."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]

    def offset(off, d):
        sign = torch.randint(0, 2, (d,), generator=g).to(F64) * 2 - 1
        return off * (0.5 + torch.rand(d, generator=g, dtype=F64)) * sign

    oq = offset(case.q_in[0], case.dq)
    ok = oq if case.shared_offset and case.dk == case.dq and case.k_in[0] == case.q_in[0] else offset(
        case.k_in[0], case.dk)
    ov = offset(case.v_in[0], case.dv)
    b = case.batch
    q = oq + 10.0 ** case.q_in[1] * torch.randn(*b, case.nq, case.dq, generator=g, dtype=F64)
    k = ok + 10.0 ** case.k_in[1] * torch.randn(*b, case.nk, case.dk, generator=g, dtype=F64)
    v = ov + 10.0 ** case.v_in[1] * torch.randn(*b, case.nk, case.dv, generator=g, dtype=F64)
    if case.integer:
        q, k = q.round(), k.round()
    lens = mask = None
    if case.mask in ("lens", "both"):
        lens = torch.randint(0, case.nk + 3, b, generator=g)
    if case.mask == "lens_per_query" or (case.mask == "both" and case.zero_len):
        lens = torch.randint(0, case.nk + 3, (*b, case.nq), generator=g)
    if lens is not None and case.zero_len:
        lens.view(-1)[0] = 0
    if case.mask in ("bool", "both"):
        shape = {"full": (*b, case.nq, case.nk), "keys": (*b, 1, case.nk), "unbatched": (case.nq, case.nk)}
        mask = torch.rand(shape[case.layout], generator=g) < case.keep
        if case.blank:  # a fully masked query row (keys layout: every key of one batch element)
            flat = mask.view(-1, mask.shape[-1])
            flat[0] = False
            flat[torch.randint(0, flat.shape[0], (1,), generator=g)] = False
    return q.to(dtype), k.to(dtype), v.to(dtype), mask, lens


def _valid(case: Case, mask, lens) -> torch.Tensor:
    """Bool (batch, Nq, Nk): the README's definition of the keys a query may attend."""
    i = torch.arange(case.nq).view(-1, 1)
    j = torch.arange(case.nk).view(1, -1)
    valid = torch.ones(*case.batch, case.nq, case.nk, dtype=torch.bool)
    if lens is not None:
        valid = valid & (j < (lens if lens.shape == (*case.batch, case.nq) else lens.unsqueeze(-1)).unsqueeze(-1))
    if mask is not None:
        valid = valid & mask
    inner_opts = case.options
    if inner_opts.get("causal"):
        valid = valid & (j <= i)
    if inner_opts.get("window") is not None or case.variant == "local":
        valid = valid & ((i - j).abs() <= inner_opts.get("window", 2))
    return valid


def _kernel(case: Case) -> str | None:
    score = case.options.get("score", case.variant)
    return case.options.get("kernel", "gaussian") if score == "nadaraya_watson" else None


def _backends(case: Case) -> list[str]:
    out = ["reference"]
    if "fused" not in BACKENDS:
        return out
    return [*out, "fused"]


# ------------------------------------------------------------------------------------------ error model
def _abs_linear(lin, x):
    mag = x.abs() @ lin.weight.detach().abs().T
    return mag + lin.bias.detach().abs() if lin.bias is not None else mag


def _score_terms(score, q, k, qm, km, exact: bool, exact_below: float):
    """(A, edge): A (..., Nq, Nk) the sum of |terms| of the score; edge = (u^2, bound of u^2) for compact kernels.

    ``exact_below``: the inputs are exact integers, and integer sums below it are exact in the dtype."""
    name = type(score).__name__
    if name == "Dot":
        a = qm @ km.mT
        return (torch.zeros_like(a) if a.numel() == 0 or float(a.max()) < exact_below else a), None
    if name == "ScaledDot":
        return qm @ km.mT / math.sqrt(q.shape[-1]), None
    if name == "General":
        return (qm @ score.W.detach().abs()) @ km.mT, None
    if name == "Cosine":
        nq, nk = (x.norm(dim=-1, keepdim=True).clamp_min(score.eps) for x in (q, k))  # as the score clamps
        a = (q.abs() / nq) @ (k.abs() / nk).mT
        if not exact:
            a = a + 2 * qm.sum(-1, keepdim=True) / nq + (2 * km.sum(-1, keepdim=True) / nk).mT
        return a / score.temperature, None
    if name == "Concat":
        wq, wk = score.w.weight.detach()[0].abs().split([q.shape[-1], k.shape[-1]])
        return (qm @ wq).unsqueeze(-1) + (km @ wk).unsqueeze(-2), None
    if name == "Additive":
        wq, wk = score.W_q.weight.detach(), score.W_k.weight.detach()
        t = torch.tanh((q @ wq.T).unsqueeze(-2) + (k @ wk.T).unsqueeze(-3))
        pre = (qm @ wq.abs().T).unsqueeze(-2) + (km @ wk.abs().T).unsqueeze(-3)
        return ((1 - t * t) * pre + 4) @ score.w_v.weight.detach()[0].abs(), None
    if name == "NadarayaWatson":
        w2 = float(score.w.detach()) ** 2
        diff = q.unsqueeze(-2) - k.unsqueeze(-3)
        u2 = w2 * (diff * diff).sum(-1)
        proj = 0.0 if exact else w2 * (diff.abs() * (qm.unsqueeze(-2) + km.unsqueeze(-3))).sum(-1)
        if score.kernel == "constant":
            return torch.zeros_like(u2), None
        if score.kernel == "gaussian":
            return 0.5 * u2 + proj, None
        au = u2 + 2 * proj
        if score.kernel == "boxcar":
            return torch.zeros_like(u2), (u2, au)
        return torch.where(u2 < 1, au / (1 - u2).clamp_min(1e-300), 0.0), (u2, au)
    raise AssertionError(f"no error model for score {name}")


@dataclass
class Model:
    out: torch.Tensor  # oracle output
    w: torch.Tensor  # oracle weights
    tol_out: torch.Tensor
    tol_w: torch.Tensor
    sum_extra: torch.Tensor  # fused weights are not renormalised: their row sums may move by this much
    crit: float  # how undetermined the float32 weights are (L1 bound per row, max over rows)
    ambiguous: str | None
    score_err: float  # max over valid keys of the score error bound eps (n A + 2 |s - m| + 4), any pooling


def _models(case: Case, oracle, q, k, v, mask, lens, valid, backends) -> dict[str, Model]:
    """Oracle result and tolerances (see the module docstring) for each backend on these inputs (float64)."""
    dtype = DTYPES[case.dtype]
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    q, k, v = q.to(F64), k.to(F64), v.to(F64)
    nan_inf = lambda t: torch.nan_to_num(t, nan=math.inf)  # noqa: E731  (inf - inf in a vacuous bound)
    with torch.no_grad():
        out, w = oracle(q, k, v, mask, valid_lens=lens, return_weights=True)
        inner = _inner(oracle)
        hidden = getattr(inner.score, "hidden_dim", 0) or 0
        if isinstance(oracle, MultiHeadAttention):
            split = lambda t: t.unflatten(-1, (oracle.num_heads, oracle.head_dim)).transpose(-2, -3)  # noqa: E731
            pairs = ((oracle.W_q, q), (oracle.W_k, k), (oracle.W_v, v))
            qp, kp, vp = (split(lin(x)) for lin, x in pairs)
            qm, km, vm = (split(_abs_linear(lin, x)) for lin, x in pairs)
            n = max(case.dq, case.dk) + oracle.head_dim + hidden + 8
            n_v = case.dv + 2
            valid_h = valid.unsqueeze(-3)
        else:
            qp, kp, vp, qm, km, vm = q, k, v, q.abs(), k.abs(), None
            n = case.dq + case.dk + hidden + 8
            valid_h = valid
        nk = case.nk
        edge = None
        if inner.pooling == "average":
            s = torch.zeros(w.shape, dtype=F64)
            terms = dict.fromkeys(backends, s)
        else:
            s = inner.score(qp, kp).expand(w.shape)
            exact_below = 2 / eps if case.integer and vm is None else 0.0
            terms = {}
            a, edge = _score_terms(inner.score, qp, kp, qm, km, vm is None, exact_below)
            terms = dict.fromkeys(backends, a.expand(w.shape))
        eff = valid_h & torch.isfinite(s)
        m = s.masked_fill(~eff, -math.inf).amax(-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, 0.0)
        sm = torch.where(eff, s - m, 0.0).abs()
        soft = inner.pooling == "soft"
        edge_hit = edge is not None and bool((valid_h & ((edge[0] - 1).abs() <= C * eps * n * edge[1] + 4 * eps)).any())
        heads = w @ vp
        dev = (vp.unsqueeze(-3) - heads.unsqueeze(-2)).abs()
        rounding_h = eps * (nk + 4) * (w @ vp.abs()) + (eps * n_v * (w @ vm) if vm is not None else 0.0)
        models, done = {}, {}
        for backend, a in terms.items():
            ambiguous = "a key at the edge of the kernel's support" if edge_hit else None
            if inner.pooling == "hard":
                da = torch.where(eff, eps * n * a, 0.0)
                top = s.masked_fill(~eff, -math.inf).argmax(-1, keepdim=True)
                near = eff & (torch.arange(nk) != top) & (m - s < C * (da + da.gather(-1, top)))
                if near.any():
                    ambiguous = "near-tie of the top scores (hard pooling)"
            delta = torch.where(eff, eps * (n * a + 2 * sm + 4), 0.0)
            score_err = float(delta.max()) if delta.numel() and inner.pooling != "average" else 0.0
            if id(a) not in done:
                d = delta if soft else torch.zeros_like(s)
                u = torch.where(w > 0, w * torch.exp(d), 0.0)
                big_u, big_s = u.sum(-1, keepdim=True), (u * d).sum(-1, keepdim=True)
                dbar = (w * d).sum(-1, keepdim=True)
                wb = torch.exp(2 * dbar) * u * (d * (big_u - u) + big_s - u * d)
                extra = torch.exp(dbar) * u * (torch.expm1(2 * d) + eps * (2 * m.abs() + sm)) if soft else 0 * u
                crit = float((wb + extra).sum(-1).max()) if wb.numel() else 0.0
                tol_h = C * ((wb.unsqueeze(-1) * dev).sum(-2) + rounding_h)
                if vm is not None:
                    wo = oracle.W_o.weight.detach().abs()
                    bo = oracle.W_o.bias.detach().abs() if oracle.W_o.bias is not None else 0.0
                    flat = lambda t: t.transpose(-2, -3).flatten(-2)  # noqa: E731
                    tol_out = flat(tol_h) @ wo.T + C * eps * (case.dq + 2) * (flat(heads).abs() @ wo.T + bo)
                else:
                    tol_out = tol_h
                done[id(a)] = (wb, extra, crit, nan_inf(tol_out + 4 * tiny))
            wb, extra, crit, tol_out = done[id(a)]
            extra = extra if backend == "fused" else 0 * extra  # only the fused weights are recomputed apart
            if backend == "fused":  # defects (c), (d) below: scale down until they cannot occur
                crit = max(crit, TARGET * 2 * score_err / 80)
            tol_w = C * (wb + eps * (nk + 4) * w + extra) + 4 * tiny
            models[backend] = Model(out, w, tol_out, nan_inf(tol_w), nan_inf(C * extra.sum(-1)),
                                    crit if math.isfinite(crit) else math.inf, ambiguous, score_err)
    return models


# ------------------------------------------------------------------------------------------------ checks
def _assert_within(case, what, got, want, tol):
    got = got.detach()
    err = (got.to(F64) - want).abs()
    bad = ~(err <= tol)
    if bad.any():
        idx = tuple(int(x) for x in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} entries off, first at {idx}: got {float(got[idx]):.9g}, "
            f"oracle {float(want[idx]):.9g}, |diff| {float(err[idx]):.3g} > tol {float(tol[idx]):.3g} "
            f"(max diff/tol {float((err / tol.clamp_min(1e-300)).max()):.3g}); case {case}")


def _weights_are_distributions(case, backend, w, valid_h, pooling, sum_tol, compact):
    eps = torch.finfo(w.dtype).eps
    w = w.detach()
    assert (w >= 0).all(), f"{backend}: negative weights"
    assert (w[~valid_h.expand_as(w)] == 0).all(), f"{backend}: nonzero weight on a masked key or outside the band"
    has_key = valid_h.any(-1).expand(w.shape[:-1])
    sums = w.sum(-1).to(F64)
    zero_row = (w == 0).all(-1)
    assert zero_row[~has_key].all(), f"{backend}: a row with no valid key has nonzero weights"
    ok = (sums - 1).abs() <= C * eps * (case.nk + 4) + sum_tol
    if compact:  # a query whose kernel window holds no key gets zero weights
        ok = ok | zero_row
    assert ok[has_key].all(), f"{backend}: weight rows do not sum to 1: {sums[has_key & ~ok][:4].tolist()}"
    if pooling == "hard":
        assert ((w == 0) | (w == 1)).all(), f"{backend}: hard weights are not one-hot"
        assert (sums[has_key] <= 1).all()
    if pooling == "average":
        count = valid_h.expand_as(w).sum(-1).clamp_min(1).to(F64)
        dev = torch.where(valid_h, (w.to(F64) - 1 / count.unsqueeze(-1)).abs(), 0.0)
        assert (dev <= 2 * eps / count.unsqueeze(-1)).all(), f"{backend}: average weights are not uniform"


def _check_case(case: Case) -> None:
    dtype = DTYPES[case.dtype]
    master = _build(case)
    multi = isinstance(master, MultiHeadAttention)
    inner = _inner(master)
    compact = _kernel(case) in COMPACT
    q, k, v, mask, lens = _inputs(case)
    valid = _valid(case, mask, lens)
    valid_h = valid.unsqueeze(-3) if multi else valid
    empty = ~valid.any(-1)  # (batch, Nq): queries with no valid key
    backends = _backends(case)
    oracle = _set_backend(copy.deepcopy(master), "reference").to(F64)
    models = _models(case, oracle, q, k, v, mask, lens, valid, backends)
    g = torch.Generator().manual_seed(case.seed + 1)
    runs = {}
    for backend in backends:
        attn = _set_backend(copy.deepcopy(master), backend)
        if backend == "fused":
            assert attn.explain(q, k, v).startswith("fused:"), attn.explain(q, k, v)
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out, w = attn(qq, kk, vv, mask, valid_lens=lens, return_weights=True)
        runs[backend] = (out, w)
        heads = (attn.num_heads,) if multi else ()
        assert out.shape == (*case.batch, case.nq, attn.output_dim(case.dv)) and out.dtype == dtype
        assert w.shape == (*case.batch, *heads, case.nq, case.nk) and w.dtype == dtype
        assert torch.isfinite(out).all(), f"{backend}: NaN/inf in the output"
        # defects (c) and (d), found by this suite (not ours to fix): the fused backend recomputes scores apart
        # from the forward kernel's lse and takes exp(s' - lse), for the returned weights (c: NaN weights, inf /
        # inf) and in the backward kernel (d: non-finite gradients; the small-D forward and the backward round
        # scores differently). Both need s' - lse > 88, i.e. scores ~1e9 in float32, impossible while twice the
        # score error bound is < 88; only beyond it are the fused weights and gradients left unchecked (the
        # output still is). See test_defect_c_* and test_defect_d_*.
        huge = backend == "fused" and 2 * models[backend].score_err >= 80
        if huge:
            _event("fused: weights and gradients not checked (defects (c), (d): scores ~1e9)")
        else:
            assert torch.isfinite(w).all(), f"{backend}: NaN/inf in the weights"
            # 2. distributions
            _weights_are_distributions(case, backend, w, valid_h, inner.pooling, models[backend].sum_extra, compact)
        # 4. empty rows: zero output and weights, and no gradient flows from them
        empty_w = empty.unsqueeze(-2) if multi else empty
        assert (out[empty] == 0).all(), f"{backend}: a query with no valid key has a nonzero output"
        assert (w.masked_select(empty_w.unsqueeze(-1)) == 0).all(), f"{backend}: a query with no valid key has weights"
        if huge:
            continue
        params = [p for p in attn.parameters() if p.requires_grad]
        names = ["query", "key", "value", *(n for n, p in attn.named_parameters() if p.requires_grad)]
        leaves = [qq, kk, vv, *params]
        go = torch.randn(out.shape, generator=g, dtype=F64).to(dtype)
        gw = torch.randn(w.shape, generator=g, dtype=F64).to(dtype)
        if empty.any():
            loss = (out * go * empty.unsqueeze(-1)).sum() + (w * gw * empty_w.unsqueeze(-1)).sum()
            grads = torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)
            for name, gr in zip(names, grads, strict=True):
                assert gr is None or (gr == 0).all(), f"{backend}: gradient of {name} from rows with no valid key"
        # 5. finite gradients of everything
        grads = torch.autograd.grad((out * go).sum() + (w * gw).sum(), leaves, allow_unused=True)
        assert grads[2] is not None, f"{backend}: no gradient for value"
        for name, gr in zip(names, grads, strict=True):
            assert gr is None or torch.isfinite(gr).all(), f"{backend}: non-finite gradient of {name}"
        if grads[0] is not None:
            assert (grads[0][empty] == 0).all(), f"{backend}: nonzero query gradient of a query with no valid key"

    # 1 and 3 need a result float32 can determine: scale query and key by powers of two until it is
    factor, crit = 1.0, max(m.crit for m in models.values())
    for _ in range(4):
        if crit <= TARGET:
            break
        factor *= 2.0 ** -(max(1, math.ceil(math.log2(crit / TARGET))) if math.isfinite(crit) else 32)
        models = _models(case, oracle, q * factor, k * factor, v, mask, lens, valid, backends)
        crit = max(m.crit for m in models.values())
    _assume(case, crit <= TARGET, "weights undetermined in float32 even after rescaling")
    reasons = {m.ambiguous for m in models.values()} - {None}
    _assume(case, not reasons, ", ".join(sorted(reasons)))
    if factor != 1.0:
        _event("oracle: query and key rescaled")
        _note(case, f"oracle comparison on query and key scaled by {factor:g}")
        q, k = q * factor, k * factor
    for backend in backends:
        model = models[backend]
        if factor != 1.0:
            with torch.no_grad():
                runs[backend] = _set_backend(copy.deepcopy(master), backend)(q, k, v, mask, valid_lens=lens,
                                                                              return_weights=True)
        out, w = runs[backend]
        _event(f"oracle: compared {backend} {case.dtype}")
        if inner.pooling == "hard":
            assert torch.equal(w.detach().to(F64), model.w), f"{backend}: hard weights differ from the oracle"
        _assert_within(case, f"{backend} weights", w, model.w, model.tol_w)
        _assert_within(case, f"{backend} output", out, model.out, model.tol_out)
        if not multi:  # 3. out = w @ v, up to the rounding of both and (fused) the recomputation of the weights
            v64 = v.to(F64)
            w64 = w.detach().to(F64)
            eps = torch.finfo(dtype).eps
            tol = model.tol_out + model.tol_w @ v64.abs() + C * eps * (case.nk + 4) * (w64 @ v64.abs())
            tol = tol if backend == "fused" else C * eps * (case.nk + 4) * (w64 @ v64.abs()) + 4 * 1e-300
            _assert_within(case, f"{backend} out = w @ v", out, w64 @ v64, tol)


# ------------------------------------------------------------------------------------------------- tests
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=cases())
def test_properties(case: Case):
    """Every drawn variant x masks x inputs: oracle agreement, distributions, out = w @ v, empty rows, gradients."""
    score = case.options.get("score", case.variant if case.variant in SCORES else "-")
    _event(f"variant: {case.variant}{'-' + case.options['pooling'] if case.variant == 'multihead' else ''} / {score}")
    _check_case(case)


EDGE_CASES = {
    "nk1": Case("soft", {"causal": False, "window": None, "score": "scaled_dot"}, batch=(2,), nq=5, nk=1, dq=4,
                dk=4, dv=3, mask="lens", seed=1),
    "nk1_hard_f64": Case("hard", {"causal": True, "window": None, "score": "additive", "query_dim": 3,
                                  "key_dim": 5, "hidden_dim": 4}, batch=(), nq=3, nk=1, dq=3, dk=5, dv=2,
                         dtype="float64", seed=2),
    "all_keys_masked_in_one_batch_element": Case(
        "multihead", {"embed_dim": 8, "num_heads": 2, "kdim": 6, "vdim": 5, "bias": True, "score": "scaled_dot",
                      "pooling": "soft", "causal": False, "window": None},
        batch=(3,), nq=4, nk=6, dq=8, dk=6, dv=5, mask="bool", layout="keys", keep=1.0, blank=True, seed=3),
    "all_keys_masked_lens0_local": Case("local", {"causal": False, "window": 1, "score": "general", "query_dim": 4,
                                                  "key_dim": 4}, batch=(2, 2), nq=6, nk=6, dq=4, dk=4, dv=2,
                                        mask="lens", zero_len=True, seed=4),
    "cosine_offset_1e3": Case("cosine", {"causal": False, "temperature": 0.1}, batch=(2,), nq=7, nk=9, dq=5,
                              dk=5, dv=3, q_in=(1e3, 0), k_in=(1e3, 0), v_in=(1e3, -3), seed=5),
    "cosine_offset_1e3_hard_window": Case(
        "hard", {"causal": True, "window": 3, "score": "cosine", "temperature": 0.02}, batch=(2,), nq=9, nk=7,
        dq=6, dk=6, dv=4, q_in=(1e3, 1), k_in=(-1e3, 1), v_in=(0.0, 2), shared_offset=False, mask="both",
        layout="full", seed=6),
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_hand_picked_edge_cases(name):
    _check_case(copy.deepcopy(EDGE_CASES[name]))


@pytest.mark.skipif("fused" not in BACKENDS, reason="the fused backend needs the compiled extension")
def test_defect_c_fused_weights_finite_at_huge_scores():
    """Scores ~1e10 in float32: the fused output is right, its recomputed weights must be finite too
    (fixed: the weights are the softmax of the recomputed scores, the kernel's lse is not reused)."""
    attn = attnzoo.create("dot", backend="fused")
    for seed in range(10):  # about half of these draws hit it
        g = torch.Generator().manual_seed(seed)
        q, k, v = (s * torch.randn(1, n, d, generator=g) for s, n, d in ((3e4, 4, 16), (3e4, 6, 16), (1.0, 6, 2)))
        out, w = attn(q, k, v, return_weights=True)
        assert torch.isfinite(out).all()
        assert torch.isfinite(w).all(), f"NaN fused weights (seed {seed})"


@pytest.mark.skipif("fused" not in BACKENDS, reason="the fused backend needs the compiled extension")
@pytest.mark.xfail(strict=True, reason="defect (d): fused backward gives non-finite gradients at huge scores")
def test_defect_d_fused_gradients_nonfinite_at_huge_scores():
    """Scores ~1e9 in float32, D = 2 (the small-D forward kernel): the gradient of the output must be finite."""
    attn = attnzoo.create("dot", backend="fused")
    for seed in range(20):  # a few of these draws hit it (with 5 queries: the backward scores them by GEMM)
        g = torch.Generator().manual_seed(seed)
        q, k, v = (s * torch.randn(1, n, d, generator=g) for s, n, d in ((3e4, 5, 2), (3e4, 6, 2), (1.0, 6, 2)))
        q.requires_grad_(True)
        attn(q, k, v).sum().backward()
        assert torch.isfinite(q.grad).all(), f"non-finite query gradient (seed {seed})"
