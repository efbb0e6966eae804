"""The conformance checks every attention variant must pass.

Each check is ``check(case)`` raising ``AssertionError`` (or the error a call raised)
when the variant misbehaves. :class:`Case` builds the variant and its inputs; a
check's ``needs`` / ``skips`` capabilities decide whether it applies.

Most checks are invariances (masks, permutations, batching) or self-consistency
(``out = w @ v``). :func:`check_reference_formula` is the one that compares a variant
with an independent formula: it runs when the case carries a ``reference``,
``reference(attn, query, key) -> scores`` written from the paper, not from the variant's code.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import attnzoo

B, NQ, NK, DQ, DK, DV = 2, 5, 7, 8, 8, 6


#: ``reference(attn, query, key) -> scores``: ``(..., Nq, Nk)``, multi-head ``(..., H, Nq, Nk)``
Reference = Callable[[attnzoo.Attention, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Case:
    """One variant with its options, able to build instances and inputs.

    ``reference``, when given, is the variant's score written from its formula (reading the
    parameters of ``attn``); it enables :func:`check_reference_formula`.
    """

    name: str
    options: dict = field(default_factory=dict)
    reference: Reference | None = field(default=None, compare=False)

    def make(self, dtype=torch.float64, seed: int = 0) -> attnzoo.Attention:
        torch.manual_seed(seed)
        return attnzoo.create(self.name, **self.options).to(dtype)

    @property
    def capabilities(self) -> frozenset:
        info = attnzoo.variant_info(self.name)
        caps = info.capabilities | frozenset(getattr(self.make(), "capabilities", ()))
        return caps | {"reference"} if self.reference is not None else caps

    def inputs(self, dtype=torch.float64, batch=(B,), nq=NQ, nk=NK, seed: int = 1, requires_grad=False):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(*batch, nq, DQ, generator=g, dtype=torch.float64).to(dtype)
        k = torch.randn(*batch, nk, DK, generator=g, dtype=torch.float64).to(dtype)
        v = torch.randn(*batch, nk, DV, generator=g, dtype=torch.float64).to(dtype)
        if requires_grad:
            for t in (q, k, v):
                t.requires_grad_(True)
        return q, k, v


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable[[Case], None]
    needs: frozenset = frozenset()
    skips: frozenset = frozenset()
    doc: str = ""

    def applies(self, capabilities: frozenset) -> bool:
        return self.needs <= capabilities and not (self.skips & capabilities)


CHECKS: dict[str, Check] = {}


def check(needs=(), skips=()):
    def deco(fn):
        name = fn.__name__
        CHECKS[name] = Check(name, fn, frozenset(needs), frozenset(skips), (fn.__doc__ or "").strip())
        return fn

    return deco


def _close(a, b, what, atol=1e-10, rtol=1e-8):
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if not torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=False):
        raise AssertionError(f"{what}: max abs difference {float((a - b).detach().abs().max()):.3g}")


def _weights_shape(attn, batch, nq, nk):
    heads = (attn.num_heads,) if "multihead" in getattr(attn, "capabilities", ()) else ()
    return (*batch, *heads, nq, nk)


def _key_mask(batch=(B,), nq=NQ, nk=NK):
    """A key-padding style bool mask (..., 1, Nk) with keys 2 and 5 masked out everywhere."""
    m = torch.ones(*batch, 1, nk, dtype=torch.bool)
    m[..., [2, 5]] = False
    return m


def _lengths():
    return torch.tensor([4, 7])


# ----------------------------------------------------------------------------------------------------------------
@check()
def check_output_shape_dtype(case: Case):
    """Output (..., Nq, out_dim) in the input dtype, finite, for float32 and float64 and any batch dims."""
    for dtype in (torch.float32, torch.float64):
        attn = case.make(dtype)
        for batch in ((B,), (), (2, 3)):
            q, k, v = case.inputs(dtype, batch=batch)
            out = attn(q, k, v)
            want = (*batch, NQ, attn.output_dim(DV))
            assert tuple(out.shape) == want, f"output shape {tuple(out.shape)} for inputs {batch}, expected {want}"
            assert out.dtype == dtype, f"output dtype {out.dtype} for {dtype} inputs"
            assert torch.isfinite(out).all(), f"non-finite output for {dtype} inputs"


#: bfloat16's machine epsilon (8 significant bits)
BF16_EPS = torch.finfo(torch.bfloat16).eps


@check(needs={"bfloat16"}, skips={"stochastic"})
def check_bfloat16(case: Case):
    """bfloat16 inputs give a bfloat16 output within a few bfloat16 roundings of the float64 one
    (computed on the same rounded inputs and parameters): ``|out - ref| <= 4 eps_bf16 max|ref|``."""
    attn16 = case.make(torch.bfloat16)
    attn64 = copy.deepcopy(attn16).to(torch.float64)  # the bfloat16-rounded parameters, exactly
    q, k, v = (t.bfloat16() for t in case.inputs(torch.float64))
    out = attn16(q, k, v)
    assert out.dtype == torch.bfloat16, f"output dtype {out.dtype} for bfloat16 inputs"
    ref = attn64(q.double(), k.double(), v.double())
    tol = 4 * BF16_EPS * float(ref.detach().abs().max())  # the built-ins stay within 1.4 eps_bf16 max|out|
    _close(out.double(), ref, f"bfloat16 vs float64 output (tolerance {tol:.3g} = 4 eps_bf16 max|out|)",
           atol=tol, rtol=0)


@check()
def check_weights_valid(case: Case):
    """Weights: shape, >= 0, rows over valid keys sum to 1, zero on masked keys; one-hot (hard),
    uniform (average), zero outside the window (local)."""
    attn = case.make()
    q, k, v = case.inputs()
    lengths = _lengths()
    out, w = attn(q, k, v, valid_lens=lengths, return_weights=True)
    caps = case.capabilities
    want = _weights_shape(attn, (B,), NQ, NK)
    assert tuple(w.shape) == want, f"weights shape {tuple(w.shape)}, expected {want}"
    w = w.detach()
    assert (w >= 0).all(), "negative weights"
    keys = torch.arange(NK)
    masked = keys >= lengths.view(B, *([1] * (w.dim() - 2)), 1)
    assert (w.masked_select(masked.expand_as(w)) == 0).all(), "nonzero weight on a key beyond valid_lens"
    sums = w.sum(-1)
    has_key = w.new_ones(sums.shape, dtype=torch.bool)
    if "window" in caps or "positional" in caps:
        has_key = _structure_valid(attn, NQ, NK).expand(*lengths.shape, *([1] * (w.dim() - 3)), NQ, NK)
        has_key = (has_key & ~masked).any(-1).expand_as(sums)
    ok = (sums - 1).abs() < 1e-8
    if "compact_support" in caps:
        ok = ok | (sums == 0)
    assert ok[has_key].all(), f"weight rows do not sum to 1: {sums[has_key][~ok[has_key]].tolist()[:4]}"
    assert (sums[~has_key] == 0).all(), "rows without a valid key must have zero weights"
    if "hard" in caps:
        assert ((w == 0) | (w == 1)).all(), "hard attention weights must be one-hot"
    if "average" in caps:
        nz = w > 0
        uniform = torch.where(nz, w, 0).amax(-1) - torch.where(nz, w, 2).amin(-1)
        assert (uniform[has_key].abs() < 1e-12).all(), "average pooling weights must be uniform"
    if "window" in caps or "positional" in caps:
        outside = ~_structure_valid(attn, NQ, NK)
        assert (w.masked_select(outside.expand_as(w)) == 0).all(), "nonzero weight outside the window / causal band"


def _structure_valid(attn, nq, nk):
    """(Nq, Nk): keys allowed by the variant's causality / window, positions being indices."""
    inner = getattr(attn, "inner", attn)
    causal, window = getattr(inner, "causal", False), getattr(inner, "window", None)
    return torch.tensor([[(not causal or j <= i) and (window is None or abs(i - j) <= window)
                          for j in range(nk)] for i in range(nq)])


@check(skips={"stochastic"})
def check_masked_keys_ignored(case: Case):
    """Changing the keys and values a query may not attend (mask or valid_lens) leaves its output unchanged,
    also when other queries attend them; NaN in padded values (masked for every query) changes nothing."""
    attn = case.make()
    q, k, v = case.inputs()
    # queries 3.. attend every key (so nothing is zeroed as padding); queries 0..2 neither keys 2, 5 nor keys >= 4
    per_query = torch.ones(B, NQ, NK, dtype=torch.bool)
    per_query[:, :3, [2, 5]] = False
    lengths = torch.full((B, NQ), NK)
    lengths[:, :3] = 4
    for kw, hidden in (({"mask": per_query}, [2, 5]), ({"valid_lens": lengths}, list(range(4, NK)))):
        k2, v2 = k.clone(), v.clone()
        k2[:, hidden] = torch.randn_like(k2[:, hidden]) * 10
        v2[:, hidden] = torch.randn_like(v2[:, hidden]) * 10
        what = next(iter(kw))
        a, b = attn(q, k2, v2, **kw), attn(q, k, v, **kw)
        _close(a[:, :3], b[:, :3], f"output of queries 0..2 after changing keys they may not attend ({what})")
    mask = _key_mask()
    for kw, hidden in (({"mask": mask}, ~mask.squeeze(-2)),
                       ({"valid_lens": _lengths()}, torch.arange(NK) >= _lengths().view(B, 1))):
        v2 = v.clone()
        v2[hidden] = float("nan")  # padding is often garbage
        what = next(iter(kw))
        _close(attn(q, k, v2, **kw), attn(q, k, v, **kw), f"output with NaN in masked values ({what})")


@check()
def check_empty_rows(case: Case):
    """A query with no valid key: zero output, zero weights, no NaN anywhere; the gradients are finite,
    and those of the empty rows alone (output and weights) are exactly zero for every input and parameter."""
    attn = case.make()
    mask = torch.ones(B, NQ, NK, dtype=torch.bool)
    mask[0, 1] = False
    lengths = torch.tensor([NK, 0])
    empty = torch.zeros(B, NQ, dtype=torch.bool)
    empty[0, 1], empty[1] = True, True
    g = torch.Generator().manual_seed(9)
    for only_empty in (False, True):
        attn.zero_grad(set_to_none=True)
        q, k, v = case.inputs(requires_grad=True)
        out, w = attn(q, k, v, mask, valid_lens=lengths, return_weights=True)
        assert torch.isfinite(out).all() and torch.isfinite(w).all(), "NaN/inf output or weights with empty rows"
        for what, rows in (("mask", (0, 1)), ("valid_lens=0", (1, slice(None)))):
            assert (out[rows] == 0).all(), f"output of a row with no valid key ({what}) is not zero"
            wr = w[0, ..., 1, :] if what == "mask" else w[1]
            assert (wr == 0).all(), f"weights of a row with no valid key ({what}) are not zero"
        rows_w = empty.view(B, *([1] * (w.dim() - 3)), NQ, 1)
        everything = torch.tensor(True)
        keep_o, keep_w = (empty.unsqueeze(-1), rows_w) if only_empty else (everything, everything)
        loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).where(keep_o, 0).sum() \
            + (w * torch.randn(w.shape, generator=g, dtype=w.dtype)).where(keep_w, 0).sum()
        loss.backward()
        for name, t in (("query", q), ("key", k), ("value", v), *attn.named_parameters()):
            if t.grad is None:
                continue
            assert torch.isfinite(t.grad).all(), f"non-finite gradient for {name} with empty rows"
            if only_empty:
                assert (t.grad == 0).all(), (f"gradient of {name} through the rows with no valid key is not zero "
                                             f"(max |grad| {float(t.grad.abs().max()):.3g})")


@check(skips={"positional", "stochastic"})
def check_key_permutation(case: Case):
    """Permuting (key, value) pairs together leaves the output unchanged (no positional notion)."""
    attn = case.make()
    q, k, v = case.inputs()
    perm = torch.randperm(NK, generator=torch.Generator().manual_seed(3))
    _close(attn(q, k[:, perm], v[:, perm]), attn(q, k, v), "output after permuting keys and values")


@check(skips={"stochastic"})
def check_query_independence(case: Case):
    """Each query's output depends on that query only."""
    attn = case.make()
    q, k, v = case.inputs()
    q2 = q.clone()
    q2[:, 2] = torch.randn_like(q2[:, 2])
    a, b = attn(q, k, v), attn(q2, k, v)
    rows = [i for i in range(NQ) if i != 2]
    _close(a[:, rows], b[:, rows], "outputs of the other queries after changing query 2")


@check(skips={"stochastic"})
def check_batch_independence(case: Case):
    """Batch elements are independent: changing element 1 leaves element 0 unchanged."""
    attn = case.make()
    q, k, v = case.inputs()
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[1] = torch.randn_like(t[1])
    _close(attn(q, k, v)[0], attn(q2, k2, v2)[0], "output of batch element 0 after changing element 1")


@check(skips={"stochastic"})
def check_batch_dims(case: Case):
    """Leading dims (2, 3) give the same result as each (Nq, D) problem on its own."""
    attn = case.make()
    q, k, v = case.inputs(batch=(2, 3))
    out = attn(q, k, v)
    for i in range(2):
        for j in range(3):
            _close(out[i, j], attn(q[i, j], k[i, j], v[i, j]), f"batch element ({i}, {j}) vs unbatched call")


@check(skips={"stochastic"})
def check_valid_lens_equals_mask(case: Case):
    """valid_lens (B,) and (B, Nq), and the equivalent bool mask, give one result."""
    attn = case.make()
    q, k, v = case.inputs()
    lengths = _lengths()
    mask = torch.arange(NK) < lengths.view(B, 1, 1)
    _close(attn(q, k, v, valid_lens=lengths), attn(q, k, v, mask), "valid_lens (B,) vs mask")
    per_query = torch.tensor([[1, 2, 3, 4, 5], [7, 6, 5, 0, 3]])
    mask = torch.arange(NK) < per_query.unsqueeze(-1)
    _close(attn(q, k, v, valid_lens=per_query), attn(q, k, v, mask), "valid_lens (B, Nq) vs mask")


@check(needs={"bias"}, skips={"stochastic"})
def check_bias_shifts_scores(case: Case):
    """A float ``bias=`` adds to the scores: -inf entries act as a False mask, and a bias constant over
    each query's keys (offsets near 1e3) changes nothing."""
    attn = case.make()
    q, k, v = case.inputs()
    g = torch.Generator().manual_seed(9)
    mask = torch.rand(NQ, NK, generator=g) > 0.4
    mask[:, 0] = True
    bias = torch.zeros(NQ, NK, dtype=q.dtype).masked_fill(~mask, float("-inf"))
    _close(attn(q, k, v, bias=bias), attn(q, k, v, mask), "bias of -inf vs the same bool mask")
    rows = (1000 + 50 * torch.randn(NQ, 1, generator=g, dtype=torch.float64)).to(q.dtype)
    _close(attn(q, k, v, bias=rows.expand(NQ, NK)), attn(q, k, v), "a bias constant per query row vs none",
           atol=1e-9)


@check(needs={"hard"}, skips={"alibi", "stochastic"})
def check_hard_ties(case: Case):
    """Hard attention breaks ties at the first valid key: all keys equal -> one-hot at the first unmasked one
    (not under ALiBi, whose scores of equal keys differ by position)."""
    attn = case.make()
    g = torch.Generator().manual_seed(5)
    q = torch.randint(-2, 3, (B, NQ, DQ), generator=g).double()
    k = torch.randint(-2, 3, (1, 1, DK), generator=g).double().expand(B, NK, DK).contiguous()
    v = torch.randn(B, NK, DV, generator=g, dtype=torch.float64)
    mask = torch.ones(B, 1, NK, dtype=torch.bool)
    mask[1, 0, :2] = False
    _, w = attn(q, k, v, mask, return_weights=True)
    first = w.detach().argmax(-1)
    want = torch.zeros_like(first)
    want[1] = 2
    assert (first == want).all() and ((w == 0) | (w == 1)).all(), f"tie broken at keys {first.unique().tolist()}"


@check(needs={"stochastic"})
def check_sampling(case: Case):
    """Sampled variants: in training mode, identical query rows draw different keys (one-hot weights, never
    a masked key, every valid key drawn over 4000 rows at these scales); in eval mode the weights are the
    deterministic arg-max."""
    attn = case.make()
    q, k, v = case.inputs(batch=(1,), nq=1)
    q = q.expand(1, 4000, q.shape[-1]) * 0.3  # scores within a few units: every key has a fair chance
    mask = torch.ones(1, 1, NK, dtype=torch.bool)
    mask[..., 2] = False
    _, w = attn(q, k, v, mask, return_weights=True)
    w = w.detach().reshape(-1, 4000, NK)
    assert ((w == 0) | (w == 1)).all() and (w.sum(-1) == 1).all(), "training weights must be one-hot"
    drawn = w.sum(-2)  # (heads, Nk): how often each key was drawn
    assert (drawn[:, 2] == 0).all(), "a masked key was drawn"
    assert (drawn[:, mask[0, 0]] > 0).all(), f"training draws do not cover the valid keys: {drawn.tolist()}"
    attn.eval()
    _, w1 = attn(q[:, :5], k, v, mask, return_weights=True)
    _, w2 = attn(q[:, :5], k, v, mask, return_weights=True)
    _close(w1, w2, "two eval-mode calls", atol=0, rtol=0)
    assert ((w1 == 0) | (w1 == 1)).all(), "eval-mode weights must be the one-hot arg-max"


@check()
def check_weights_pool_values(case: Case):
    """The output is the weights applied to the values: ``out = attn.output_from_weights(w, v)``
    (``w @ v``; multi-head: per head, then the output projection)."""
    attn = case.make()
    q, k, v = case.inputs()
    out, w = attn(q, k, v, valid_lens=_lengths(), return_weights=True)
    _close(out, attn.output_from_weights(w, v), "output vs the weights applied to the values")


@check(skips={"stochastic"})
def check_entropy(case: Case):
    """``return_entropy=True``: the same output, and ``H = -sum_j w log w`` of the weights returned (shape
    ``weights.shape[:-1]``, 0 on rows without a key, within ``[0, log #valid]``), with finite gradients."""
    attn = case.make()
    q, k, v = case.inputs(requires_grad=True)
    lengths = torch.tensor([4, 0])
    out, w = attn(q, k, v, valid_lens=lengths, return_weights=True)
    out2, w2, ent = attn(q, k, v, valid_lens=lengths, return_weights=True, return_entropy=True)
    _close(out2, out, "output with return_entropy=True")
    _close(w2, w, "weights with return_entropy=True")
    w = w.detach()
    want = -(w * torch.where(w > 0, w, 1.0).log()).sum(-1)
    _close(ent.detach(), want, "entropy vs -sum w log w of the weights", atol=1e-9, rtol=1e-7)
    n_valid = lengths.view(B, *([1] * (ent.dim() - 1))).expand(ent.shape).clamp_min(1)
    assert (ent >= -1e-12).all() and (ent <= n_valid.double().log() + 1e-9).all(), "entropy outside [0, log n]"
    (ent.sum() + 0 * out2.sum()).backward()
    for name, t in (("query", q), ("key", k), ("value", v)):
        assert t.grad is None or torch.isfinite(t.grad).all(), f"non-finite gradient of the entropy to {name}"


@check(skips={"stochastic"})
def check_gradcheck(case: Case):
    """torch.autograd.gradcheck in float64 (hard: w.r.t. value, as its score gradient is straight-through)."""
    attn = case.make()
    q, k, v = case.inputs(nq=3, nk=4, requires_grad=True)
    lengths = torch.tensor([3, 2])
    if "hard" in case.capabilities:
        fn, inputs = (lambda v_: attn(q.detach(), k.detach(), v_, valid_lens=lengths)), (v,)
    else:
        fn, inputs = (lambda *x: attn(*x, valid_lens=lengths)), (q, k, v)
    try:
        ok = torch.autograd.gradcheck(fn, inputs)
    except RuntimeError as exc:  # torch.autograd.gradcheck.GradcheckError
        raise AssertionError(str(exc).splitlines()[0]) from exc
    assert ok, "gradcheck failed"


@check(skips={"stochastic"})
def check_state_dict_roundtrip(case: Case):
    """Loading a saved state_dict into a differently initialised instance reproduces the output."""
    a, b = case.make(seed=0), case.make(seed=123)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    q, k, v = case.inputs()
    _close(b(q, k, v), a(q, k, v), "output after a state_dict round trip", atol=0, rtol=0)
    _close(copy.deepcopy(a)(q, k, v), a(q, k, v), "output of a deep copy", atol=0, rtol=0)


@check(skips={"stochastic"})
def check_deterministic(case: Case):
    """Two calls with the same inputs give bitwise equal outputs."""
    attn = case.make()
    q, k, v = case.inputs()
    _close(attn(q, k, v, valid_lens=_lengths()), attn(q, k, v, valid_lens=_lengths()), "repeated call",
           atol=0, rtol=0)


def _raises_naming(fn, arg: str, what: str):
    try:
        fn()
    except (ValueError, TypeError) as exc:
        assert arg in str(exc), f"{what}: the error does not name {arg!r}: {exc}"
        return
    except Exception as exc:  # noqa: BLE001
        got = f"{type(exc).__name__}: {exc}"
        raise AssertionError(f"{what}: expected ValueError/TypeError naming {arg!r}, got {got}") from exc
    raise AssertionError(f"{what}: no error raised")


@check()
def check_input_errors(case: Case):
    """Mismatched shapes, dtypes, devices and bad masks raise a clear error naming the argument."""
    attn = case.make()
    q, k, v = case.inputs()
    _raises_naming(lambda: attn(q, k, v[:, :-1]), "value", "value with fewer rows than keys")
    _raises_naming(lambda: attn(q, k[:1], v[:1]), "key", "key with another batch size")
    _raises_naming(lambda: attn(q, k.float(), v), "key", "key in another dtype")
    _raises_naming(lambda: attn(q, k.to("meta"), v), "key", "key on another device")
    _raises_naming(lambda: attn(q, k, v, torch.ones(B, NQ, NK + 1, dtype=torch.bool)), "mask", "mask of a wrong shape")
    _raises_naming(lambda: attn(q, k, v, torch.ones(B, NQ, NK)), "mask", "float mask")
    _raises_naming(lambda: attn(q, k, v, valid_lens=torch.tensor([1, 2, 3])), "valid_lens", "valid_lens of 3 for B=2")
    _raises_naming(lambda: attn(q, k, v, valid_lens=torch.tensor([1.0, 2.0])), "valid_lens", "float valid_lens")


# ----------------------------------------------------------------------------------------------------------------
def _perturbed(attn: attnzoo.Attention, seed: int = 4) -> attnzoo.Attention:
    """Move every parameter far from its initial value, as training would: each element times 1.5 +- 0.5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.mul_(1.5 + 0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return attn


def _reference_weights(scores: torch.Tensor, valid: torch.Tensor, caps: frozenset) -> torch.Tensor:
    """Pooling of ``scores`` over ``valid`` keys, written independently of attnzoo's poolings."""
    if "average" in caps:
        n = valid.sum(-1, keepdim=True)
        return valid.double() / n.clamp_min(1)
    s = scores.masked_fill(~valid, float("-inf"))
    live = torch.isfinite(s).any(-1, keepdim=True)  # rows with a key of finite score
    for name, alpha in (("sparsemax", 2.0), ("entmax15", 1.5)):
        if name in caps:
            return _bisected_entmax(torch.where(live, s, 0.0), alpha) * live
    if "hard" in caps:
        first = s.argmax(-1, keepdim=True)  # torch.argmax returns the first maximum
        return torch.zeros_like(s).scatter(-1, first, 1.0) * live
    return torch.softmax(torch.where(live, s, 0.0), -1) * live


def _bisected_entmax(s: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha-entmax of each row by bisection on its threshold (float64, to the last bit):
    ``w = [(alpha - 1) s - tau]_+^(1 / (alpha - 1))`` with ``tau`` such that ``sum w = 1``."""
    z = (alpha - 1) * (s - s.amax(-1, keepdim=True))
    lo, hi = torch.full_like(z[..., :1], -1.0), torch.zeros_like(z[..., :1])  # sum w >= 1 at lo, <= 1 at hi
    for _ in range(200):
        mid = (lo + hi) / 2
        over = (z - mid).clamp_min(0).pow(1 / (alpha - 1)).sum(-1, keepdim=True) >= 1
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    w = (z - lo).clamp_min(0).pow(1 / (alpha - 1))
    return w / w.sum(-1, keepdim=True)


@check(needs={"reference"}, skips={"stochastic"})
def check_reference_formula(case: Case):
    """Output and weights equal the pooling (softmax / first arg-max / uniform, within masks, lengths,
    causality and window) of the case's reference formula, in float64, on un-centred inputs and values,
    with parameters moved far from their initial values."""
    attn = _perturbed(case.make())
    q, k, v = case.inputs()
    q, k, v = 0.5 + 1.5 * q, -0.25 + 1.5 * k, 1e3 + 10 * v
    lengths, mask = _lengths(), torch.ones(B, NQ, NK, dtype=torch.bool)
    mask[0, 3, :2] = False
    mask[1, :, 1] = False
    out, w = attn(q, k, v, mask, valid_lens=lengths, return_weights=True)
    with torch.no_grad():
        scores = case.reference(attn, q, k)
    heads = w.dim() - 3  # 1 for multi-head weights (B, H, Nq, Nk)
    valid = mask & (torch.arange(NK) < lengths.view(B, 1, 1)) & _structure_valid(attn, NQ, NK)
    valid = valid.view(B, *([1] * heads), NQ, NK)
    if tuple(scores.shape) != tuple(w.shape):
        raise AssertionError(f"reference scores have shape {tuple(scores.shape)}, weights {tuple(w.shape)}")
    caps = case.capabilities
    want = _reference_weights(scores.double(), valid.expand(w.shape), caps)
    if not caps & {"hard", "average"} and not ((want > 0).sum(-1) > 1).any():
        raise AssertionError("the reference weights have no row with two keys in it: these options make the "
                             "check prove nothing (e.g. a kernel support narrower than the inputs' spread)")
    _close(w.detach(), want, "weights vs the pooled reference formula", atol=1e-9, rtol=1e-7)
    if not heads:
        _close(out.detach(), want @ v, "output vs the pooled reference formula @ value", atol=1e-7, rtol=1e-9)
