"""attnzoo.nn: positional encodings, attention pooling with a learned query, hierarchical attention; their plots
and the hierarchical-attention example. Independent formulas are written out here in float64."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo.nn import AttentionPool, HierarchicalAttention, PositionalEncoding, sinusoidal_table
from attnzoo.nn.pooling import default_options

ROOT = Path(__file__).resolve().parents[1]
DTYPE = torch.float64


def _d2l_table(max_len: int, num_hiddens: int, dtype=torch.float32):
    """d2l's ``PositionalEncoding.__init__`` (chapter 11.6), verbatim but for the dtype."""
    P = torch.zeros((1, max_len, num_hiddens), dtype=dtype)
    X = torch.arange(max_len, dtype=dtype).reshape(-1, 1) / torch.pow(
        10000, torch.arange(0, num_hiddens, 2, dtype=dtype) / num_hiddens)
    P[:, :, 0::2] = torch.sin(X)
    P[:, :, 1::2] = torch.cos(X)
    return P[0]


def _formula(max_len: int, d: int):
    """``P[i, 2j] = sin(i / 10000^(2j/d))``, ``P[i, 2j+1] = cos(i / 10000^(2j/d))``, element by element."""
    rows = []
    for i in range(max_len):
        row = []
        for c in range(d):
            angle = i / 10000 ** ((c - c % 2) / d)
            row.append(math.sin(angle) if c % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=DTYPE)


# -- positional encoding ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 7, 32, 33])
def test_sinusoidal_table_is_the_formula(d):
    P = sinusoidal_table(300, d, dtype=DTYPE)
    assert P.shape == (300, d) and P.dtype == DTYPE
    torch.testing.assert_close(P, _formula(300, d), rtol=0, atol=1e-12)
    torch.testing.assert_close(sinusoidal_table(300, d), P.float(), rtol=0, atol=0)  # float32: rounded once


def test_sinusoidal_table_is_d2ls():
    assert torch.equal(sinusoidal_table(1000, 32, dtype=DTYPE), _d2l_table(1000, 32, DTYPE))
    # d2l builds it in float32: its angles i / 10000^(2j/d) are rounded, about 6e-8 * i off
    torch.testing.assert_close(sinusoidal_table(1000, 32), _d2l_table(1000, 32), rtol=0, atol=1e-4)
    with pytest.raises(RuntimeError):  # d2l's construction fails for odd d; ours is the formula (test above)
        _d2l_table(10, 7)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_encoding_adds_the_table(kind):
    torch.manual_seed(0)
    pe = PositionalEncoding(9, max_len=20, kind=kind)
    x = torch.randn(2, 3, 20, 9, dtype=DTYPE)
    table = _formula(20, 9) if kind == "sinusoidal" else pe.P.detach().double()
    torch.testing.assert_close(pe.double()(x) if kind == "learned" else pe(x), x + table, rtol=0, atol=1e-12)
    x32 = x.float()
    want = x32 + (table.float() if kind == "sinusoidal" else pe.P.detach().float())
    torch.testing.assert_close(PositionalEncoding(9, 20)(x32) if kind == "sinusoidal" else pe.float()(x32),
                               want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_offset_equals_slicing_the_longer_sequence(kind):
    torch.manual_seed(0)
    pe = PositionalEncoding(16, max_len=50, kind=kind)
    x = torch.randn(3, 50, 16)
    full = pe(x)
    for offset, n in ((0, 7), (13, 1), (20, 30), (49, 1)):
        assert torch.equal(pe(x[:, offset: offset + n], offset=offset), full[:, offset: offset + n])


def test_learned_table_trains_and_the_sinusoidal_one_is_no_state():
    torch.manual_seed(0)
    pe = PositionalEncoding(8, max_len=30, kind="learned")
    assert isinstance(pe.P, torch.nn.Parameter) and 0.01 < float(pe.P.detach().std()) < 0.03  # N(0, 0.02^2)
    before = pe.P.detach().clone()
    x = torch.randn(4, 5, 8)
    (pe(x, offset=10) ** 2).sum().backward()
    rows = pe.P.grad.abs().sum(-1) > 0
    assert rows[10:15].all() and not rows[:10].any() and not rows[15:].any()  # exactly the rows it read
    torch.optim.SGD(pe.parameters(), lr=0.1).step()
    assert not torch.equal(pe.P.detach(), before)
    assert set(pe.state_dict()) == {"P"}
    sin = PositionalEncoding(8, max_len=30)
    assert "P" not in sin.state_dict() and not list(sin.parameters())
    assert sin.P.dtype == DTYPE  # kept in float64, cast per call


def test_dropout_applies_in_training_only():
    torch.manual_seed(0)
    pe = PositionalEncoding(8, max_len=10, dropout=0.5)
    x = torch.randn(100, 10, 8)
    y = pe(x)
    dropped = y == 0
    assert 0.4 < dropped.float().mean() < 0.6
    torch.testing.assert_close(y[~dropped], 2 * pe.eval()(x)[~dropped])  # kept entries scaled by 1 / (1 - p)
    assert torch.equal(pe.eval()(x), x + pe.P[:10].float())


@pytest.mark.parametrize("make, name", [
    (lambda: PositionalEncoding(0), "num_hiddens"),
    (lambda: PositionalEncoding(True), "num_hiddens"),
    (lambda: PositionalEncoding(8, max_len=0), "max_len"),
    (lambda: PositionalEncoding(8, kind="rope"), "kind"),
    (lambda: PositionalEncoding(8, dropout=1.0), "dropout"),
    (lambda: PositionalEncoding(8, max_len=10)(torch.zeros(2, 11, 8)), "offset"),
    (lambda: PositionalEncoding(8, max_len=10)(torch.zeros(2, 4, 8), offset=7), "offset"),
    (lambda: PositionalEncoding(8, max_len=10)(torch.zeros(2, 4, 8), offset=-1), "offset"),
    (lambda: PositionalEncoding(8, max_len=10)(torch.zeros(2, 4, 8), offset=1.0), "offset"),
    (lambda: PositionalEncoding(8)(torch.zeros(2, 4, 6)), "x"),
    (lambda: PositionalEncoding(8)(torch.zeros(8)), "x"),
    (lambda: PositionalEncoding(8)(torch.zeros(2, 4, 8, dtype=torch.long)), "x"),
    (lambda: sinusoidal_table(0, 4), "max_len"),
    (lambda: sinusoidal_table(4, 0), "d"),
    (lambda: sinusoidal_table(4, 4, dtype=torch.int64), "dtype"),
])
def test_encoding_errors_name_the_argument(make, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}: .*(got|need)"):
        make()


def test_offset_error_says_what_it_needs():
    with pytest.raises(ValueError, match=r"offset: .*7 \.\. 10 need offset \+ N <= max_len = 10 \(N = 4\)"):
        PositionalEncoding(8, max_len=10)(torch.zeros(2, 4, 8), offset=7)


# -- attention pooling --------------------------------------------------------------------------------------------

def _pool(dim=6, variant="additive", seed=0, **options):
    torch.manual_seed(seed)
    return AttentionPool(dim, variant, **options).double()


def test_additive_pool_is_the_formula():
    pool = _pool(6)
    score = pool.attn.score
    assert (score.query_dim, score.key_dim, score.hidden_dim) == (6, 6, 6)
    x = torch.randn(3, 4, 7, 6, dtype=DTYPE) * 3 + 5  # un-centred
    lens = torch.tensor([[7, 1, 3, 5], [2, 7, 7, 4], [6, 6, 1, 7]])
    out, w = pool(x, valid_lens=lens, return_weights=True)
    # w_j = softmax_j(v^T tanh(W_q u + W_k x_j)) over j < len, out = sum_j w_j x_j
    Wq, Wk, v = score.W_q.weight, score.W_k.weight, score.w_v.weight[0]
    s = torch.tanh(pool.query @ Wq.T + x @ Wk.T) @ v
    s = s.masked_fill(torch.arange(7) >= lens.unsqueeze(-1), float("-inf"))
    want_w = torch.softmax(s, -1)
    torch.testing.assert_close(w, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, (want_w.unsqueeze(-1) * x).sum(-2), rtol=1e-10, atol=1e-10)


SINGLE_HEAD = ["additive", "scaled_dot", "dot", "cosine", "general", "concat", "soft", "hard", "nadaraya_watson",
               "average"]


@pytest.mark.parametrize("variant", SINGLE_HEAD)
def test_pool_is_the_weighted_sum_over_valid_rows(variant):
    pool = _pool(5, variant)
    x = torch.randn(2, 3, 8, 5, dtype=DTYPE)
    lens = torch.tensor([[8, 3, 1], [5, 2, 8]])
    out, w = pool(x, valid_lens=lens, return_weights=True)
    assert out.shape == (2, 3, 5) and w.shape == (2, 3, 8)
    torch.testing.assert_close(out, (w.unsqueeze(-1) * x).sum(-2), rtol=1e-10, atol=1e-12)
    valid = torch.arange(8) < lens.unsqueeze(-1)
    assert (w[~valid] == 0).all() and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, dtype=DTYPE), rtol=0, atol=1e-12)
    assert torch.equal(pool(x, valid_lens=lens), out)  # the same without return_weights
    if variant == "hard":
        assert ((w == 0) | (w == 1)).all()


def test_multihead_pool():
    pool = _pool(8, "multihead")
    assert pool.attn.num_heads == 2 and pool.attn.embed_dim == 8
    x = torch.randn(3, 6, 8, dtype=DTYPE)
    out, w = pool(x, valid_lens=torch.tensor([6, 2, 4]), return_weights=True)
    assert out.shape == (3, 8) and w.shape == (3, 2, 6)  # one row of weights per head
    torch.testing.assert_close(out, pool.attn.output_from_weights(w.unsqueeze(-2), x).squeeze(-2))
    assert _pool(7, "multihead").attn.num_heads == 1  # 2 heads do not divide 7


def test_mask_equals_valid_lens_and_combines_with_them():
    pool = _pool(4)
    x = torch.randn(5, 9, 4, dtype=DTYPE)
    lens = torch.tensor([9, 4, 1, 7, 3])
    mask = torch.arange(9) < lens.unsqueeze(-1)
    out, w = pool(x, mask, return_weights=True)
    out2, w2 = pool(x, valid_lens=lens, return_weights=True)
    torch.testing.assert_close(out, out2, rtol=0, atol=1e-12)
    torch.testing.assert_close(w, w2, rtol=0, atol=1e-12)
    odd = torch.arange(9) % 2 == 1
    w3 = pool(x, odd.expand(5, 9), valid_lens=lens, return_weights=True)[1]
    assert (w3[~(mask & odd)] == 0).all()
    torch.testing.assert_close(w3.sum(-1)[lens > 1], torch.ones(4, dtype=DTYPE))


@pytest.mark.parametrize("garbage", [float("nan"), 1e30, float("inf")])
@pytest.mark.parametrize("variant", ["additive", "scaled_dot", "average"])
def test_padding_garbage_changes_nothing(variant, garbage):
    pool = _pool(4, variant)
    x = torch.randn(3, 6, 4, dtype=DTYPE)
    lens = torch.tensor([6, 2, 4])
    pad = torch.arange(6) >= lens.unsqueeze(-1)
    dirty = x.masked_fill(pad.unsqueeze(-1), garbage)
    clean = x.masked_fill(pad.unsqueeze(-1), 0.0)
    out, w = pool(dirty, valid_lens=lens, return_weights=True)
    assert out.isfinite().all()
    torch.testing.assert_close(out, pool(clean, valid_lens=lens), rtol=0, atol=0)
    for b in range(3):  # and each sequence alone, unpadded
        torch.testing.assert_close(out[b], pool(x[b, : lens[b]]), rtol=1e-12, atol=1e-12)
    xx = dirty.clone().requires_grad_()
    pool(xx, valid_lens=lens).sum().backward()
    assert xx.grad.isfinite().all() and (xx.grad[pad] == 0).all()


def test_no_valid_row_pools_to_zeros():
    pool = _pool(4)
    x = torch.randn(3, 5, 4, dtype=DTYPE)
    out, w = pool(x, valid_lens=torch.tensor([0, 5, 0]), return_weights=True)
    assert (out[[0, 2]] == 0).all() and (w[[0, 2]] == 0).all() and out[1].abs().sum() > 0
    out, w = pool(x, torch.zeros(3, 5, dtype=torch.bool), return_weights=True)
    assert (out == 0).all() and (w == 0).all()


@pytest.mark.parametrize("variant", ["additive", "scaled_dot", "cosine", "multihead"])
def test_gradient_reaches_the_learned_query(variant):
    pool = _pool(6, variant)
    x = torch.randn(4, 7, 6, dtype=DTYPE)
    target = torch.randn(4, 6, dtype=DTYPE)
    ((pool(x, valid_lens=torch.tensor([7, 3, 5, 1])) - target) ** 2).sum().backward()
    assert pool.query.grad is not None and pool.query.grad.abs().sum() > 0


def test_default_options_fill_the_widths():
    assert default_options("additive", 12, {}) == {"query_dim": 12, "key_dim": 12, "hidden_dim": 12}
    assert default_options("additive", 12, {"hidden_dim": 3}) == {"query_dim": 12, "key_dim": 12, "hidden_dim": 3}
    assert default_options("hard", 12, {"score": "general"}) == {"query_dim": 12, "key_dim": 12, "score": "general"}
    assert default_options("scaled_dot", 12, {}) == {}
    assert _pool(12, "additive", hidden_dim=3).attn.score.hidden_dim == 3
    assert default_options("multihead", 12, {"num_heads": 3})["num_heads"] == 3


@pytest.mark.parametrize("make, name", [
    (lambda: AttentionPool(0), "dim"),
    (lambda: AttentionPool(4, 3), "variant"),
    (lambda: AttentionPool(4)(torch.zeros(2, 3, 5)), "x"),
    (lambda: AttentionPool(4)(torch.zeros(4)), "x"),
    (lambda: AttentionPool(4)(torch.zeros(2, 3, 4, dtype=DTYPE)), "x"),
    (lambda: AttentionPool(4)(torch.zeros(2, 3, 4), valid_lens=torch.tensor([1, 2, 3])), "valid_lens"),
    (lambda: AttentionPool(4)(torch.zeros(2, 3, 4), valid_lens=torch.tensor([1.0, 2.0])), "valid_lens"),
    (lambda: AttentionPool(4)(torch.zeros(2, 3, 4), torch.ones(2, 5, dtype=torch.bool)), "mask"),
    (lambda: AttentionPool(4)(torch.zeros(2, 3, 4), torch.ones(2, 3)), "mask"),
])
def test_pool_errors_name_the_argument(make, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}: .*(got|differ|parameters are)"):
        make()


def test_pool_unknown_variant_or_option():
    with pytest.raises(attnzoo.UnknownNameError, match="variant: unknown name 'nope'"):
        AttentionPool(4, "nope")
    with pytest.raises(attnzoo.UnknownNameError, match="hiden_dim"):
        AttentionPool(4, "additive", hiden_dim=3)


# -- hierarchical attention ---------------------------------------------------------------------------------------

def _documents(B=3, S=4, T=6, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, T, dim, generator=g, dtype=DTYPE)
    sentence_lens = torch.tensor([4, 2, 1])[:B]
    word_lens = torch.randint(1, T + 1, (B, S), generator=g)
    return x, word_lens, sentence_lens


def _han(dim=5, seed=0, **kw):
    torch.manual_seed(seed)
    return HierarchicalAttention(dim, **kw).double()


def test_hierarchy_is_two_pools_composed():
    han = _han()
    x, wl, sl = _documents()
    wl = wl.masked_fill(torch.arange(4) >= sl.unsqueeze(-1), 0)  # padded sentences: no words
    doc, (w_words, w_sents) = han(x, valid_lens=(wl, sl), return_weights=True)
    sents, ww = han.pools[0](x, valid_lens=wl, return_weights=True)
    want, ws = han.pools[1](sents, valid_lens=sl, return_weights=True)
    torch.testing.assert_close(doc, want, rtol=0, atol=0)
    torch.testing.assert_close(w_words, ww, rtol=0, atol=0)
    torch.testing.assert_close(w_sents, ws, rtol=0, atol=0)
    assert doc.shape == (3, 5) and w_words.shape == (3, 4, 6) and w_sents.shape == (3, 4)
    assert torch.equal(han(x, valid_lens=(wl, sl)), doc)
    no_lens = han(x)
    torch.testing.assert_close(no_lens, han.pools[1](han.pools[0](x)), rtol=0, atol=0)


def test_hierarchy_respects_lengths_at_both_levels():
    han = _han()
    x, wl, sl = _documents()
    pad_s = torch.arange(4) >= sl.unsqueeze(-1)
    pad_w = (torch.arange(6) >= wl.unsqueeze(-1)) | pad_s.unsqueeze(-1)
    dirty = x.masked_fill(pad_w.unsqueeze(-1), float("nan"))
    garbage_lens = wl.masked_fill(pad_s, 99)  # the word lengths of padded sentences are never read
    doc, (w_words, w_sents) = han(dirty, valid_lens=(garbage_lens, sl), return_weights=True)
    assert doc.isfinite().all() and w_words.isfinite().all()
    assert (w_words[pad_w] == 0).all() and (w_sents[pad_s] == 0).all()
    torch.testing.assert_close(w_words.sum(-1)[~pad_s], torch.ones(int((~pad_s).sum()), dtype=DTYPE))
    torch.testing.assert_close(w_sents.sum(-1), torch.ones(3, dtype=DTYPE))
    for b in range(3):  # each document alone, cut to its own sentences and their words
        s = int(sl[b])
        t = int(wl[b, :s].max())
        alone = han(x[b, :s, :t], valid_lens=(wl[b, :s], torch.tensor(s)))
        torch.testing.assert_close(doc[b], alone, rtol=1e-12, atol=1e-12)
    xx = dirty.clone().requires_grad_()
    han(xx, valid_lens=(garbage_lens, sl)).sum().backward()
    assert xx.grad.isfinite().all() and (xx.grad[pad_w] == 0).all()


def test_hierarchy_lengths_are_optional_per_level():
    han = _han()
    x, wl, sl = _documents()
    only_words = han(x, valid_lens=(wl, None))
    torch.testing.assert_close(only_words, han.pools[1](han.pools[0](x, valid_lens=wl)), rtol=0, atol=0)
    only_sents, (w_words, _) = han(x, valid_lens=(None, sl), return_weights=True)
    torch.testing.assert_close(only_sents, han.pools[1](han.pools[0](x), valid_lens=sl), rtol=0, atol=0)
    assert (w_words[torch.arange(4) >= sl.unsqueeze(-1)] == 0).all()  # padded sentences: zero weights


def test_hierarchy_levels_and_batch_dims():
    torch.manual_seed(0)
    han = HierarchicalAttention(4, levels=3).double()
    x = torch.randn(2, 3, 4, 5, 6, 4, dtype=DTYPE)  # 2 x 3 batch, 4 sections of 5 sentences of 6 words
    lens = (torch.randint(0, 7, (2, 3, 4, 5)), torch.randint(0, 6, (2, 3, 4)), torch.randint(0, 5, (2, 3)))
    out, weights = han(x, valid_lens=lens, return_weights=True)
    assert out.shape == (2, 3, 4) and [w.shape for w in weights] == [(2, 3, 4, 5, 6), (2, 3, 4, 5), (2, 3, 4)]
    one = HierarchicalAttention(4, levels=1).double()
    torch.testing.assert_close(one(x[0, 0, 0]), one.pools[0](x[0, 0, 0]), rtol=0, atol=0)


def test_hierarchy_variant_per_level_and_encoders():
    han = _han(variant=("additive", "average"))
    assert han.pools[0].attn.score is not None and han.pools[1].variant == "average"
    x, wl, sl = _documents()
    _, (_, w_sents) = han(x, valid_lens=(wl, sl), return_weights=True)
    torch.testing.assert_close(w_sents, (torch.arange(4) < sl.unsqueeze(-1)) / sl.unsqueeze(-1).double())
    # pooling is order-blind; a positional encoding of the sentences makes their order count
    perm = torch.tensor([2, 0, 3, 1])
    plain = _han()
    torch.testing.assert_close(plain(x[:, perm]), plain(x), rtol=1e-12, atol=1e-12)
    positional = _han(encoders=[None, PositionalEncoding(5, max_len=4)])
    assert not torch.allclose(positional(x[:, perm]), positional(x))
    sents = positional.pools[0](x)
    want = positional.pools[1](sents + sinusoidal_table(4, 5, dtype=DTYPE))
    torch.testing.assert_close(positional(x), want, rtol=1e-12, atol=1e-12)


def test_encoders_see_padding_as_zeros():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, h):
            seen.append(h)
            return h

    han = _han(encoders=[Spy(), None])
    x, wl, sl = _documents()
    pad_w = torch.arange(6) >= wl.unsqueeze(-1)
    han(x.masked_fill(pad_w.unsqueeze(-1), float("nan")), valid_lens=(wl, None))
    assert (seen[0][pad_w] == 0).all() and torch.equal(seen[0][~pad_w], x[~pad_w])


@pytest.mark.parametrize("make, name", [
    (lambda: HierarchicalAttention(4, levels=0), "levels"),
    (lambda: HierarchicalAttention(0), "dim"),
    (lambda: HierarchicalAttention(4, variant=("additive",)), "variant"),
    (lambda: HierarchicalAttention(4, encoders=[None]), "encoders"),
    (lambda: HierarchicalAttention(4, encoders=[None, lambda h: h]), "encoders"),
    (lambda: HierarchicalAttention(4)(torch.zeros(3, 4)), "x"),
    (lambda: HierarchicalAttention(4)(torch.zeros(2, 3, 4, 5)), "x"),
    (lambda: HierarchicalAttention(4)(torch.zeros(2, 3, 5, 4), valid_lens=torch.ones(2, 3, dtype=torch.long)),
     "valid_lens"),
    (lambda: HierarchicalAttention(4)(torch.zeros(2, 3, 5, 4), valid_lens=(None,)), "valid_lens"),
    (lambda: HierarchicalAttention(4)(torch.zeros(2, 3, 5, 4), valid_lens=(torch.ones(2, dtype=torch.long), None)),
     r"valid_lens\[0\]"),
    (lambda: HierarchicalAttention(4)(torch.zeros(2, 3, 5, 4), valid_lens=(None, torch.ones(3, dtype=torch.long))),
     r"valid_lens\[1\]"),
    (lambda: HierarchicalAttention(4, encoders=[torch.nn.Linear(4, 3), None])(torch.zeros(2, 3, 5, 4)),
     r"encoders\[0\]"),
])
def test_hierarchy_errors_name_the_argument(make, name):
    with pytest.raises((ValueError, TypeError), match=rf"^{name}: .*got"):
        make()


# -- the example ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("hierarchical_attention_example",
                                                  ROOT / "examples" / "hierarchical_attention.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: more threads only add synchronisation on a busy machine
    yield
    torch.set_num_threads(n)


def test_example_documents(example):
    g = torch.Generator().manual_seed(0)
    docs = example.make_documents(500, example.embeddings(8, g), g)
    opinion = (docs.tokens == example.GOOD) | (docs.tokens == example.BAD)
    assert (opinion.sum((-1, -2)) == 2).all() and (opinion.sum(-1) <= 1).all()  # two sentences, one word each
    first = opinion.any(-1).float().argmax(-1)
    first_word = docs.tokens[torch.arange(500), first]
    assert torch.equal((first_word == example.GOOD).any(-1).long(), docs.y)
    pad = docs.tokens < 0
    assert torch.equal(pad, torch.arange(10) >= docs.word_lens.unsqueeze(-1))
    assert docs.x[pad].isnan().all() and docs.x[~pad].isfinite().all()
    assert (docs.word_lens[torch.arange(5) >= docs.sentence_lens.unsqueeze(-1)] == 0).all()
    assert 0.4 < docs.y.float().mean() < 0.6


def test_example_needs_attention_at_both_levels(example, one_thread):
    both = example.train(steps=300, n_test=1000)
    assert both.accuracy >= 0.95
    # mean over sentences is order-blind: it sees the same sentences for both labels, whatever the word level does
    order_blind = example.train("attention", "mean", steps=300, n_test=1000)
    assert order_blind.accuracy < 0.6


# -- plots ----------------------------------------------------------------------------------------------------------

def test_positional_table_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from attnzoo.tools import plot

    fig = plot.positional_table(64, 100, path=tmp_path / "pe.png")
    assert (tmp_path / "pe.png").stat().st_size > 0
    heat = fig.axes[0]
    assert heat.get_xlabel() == "Column (encoding dimension)" and heat.get_ylabel() == "Row (position)"
    assert (heat.images[0].get_array() == sinusoidal_table(100, 64).numpy()).all()  # drawn in float32
    learned = PositionalEncoding(8, max_len=12, kind="learned")
    assert plot.positional_table(learned).axes[0].images[0].get_array().shape == (12, 8)
    with pytest.raises(ValueError, match="^table: "):
        plot.positional_table(torch.zeros(3))


def test_hierarchy_weights_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from attnzoo.tools import plot

    han = _han()
    x, wl, sl = _documents()
    _, (w_words, w_sents) = han(x, valid_lens=(wl, sl), return_weights=True)
    tokens = [["w"] * int(n) for n in wl[0]]
    fig = plot.hierarchy_weights(w_words[0], w_sents[0], tokens, path=tmp_path / "h.png", title="doc 0")
    assert (tmp_path / "h.png").stat().st_size > 0
    heat, bars = fig.axes[:2]
    assert len(heat.texts) == int(wl[0].sum())
    assert [p.get_width() for p in bars.patches] == pytest.approx(w_sents[0].tolist())
    shown = heat.images[0].get_array()
    assert shown.mask.sum() == 4 * 6 - int(wl[0].sum())  # padding left blank
    with pytest.raises(ValueError, match="^sentence_weights: "):
        plot.hierarchy_weights(w_words[0], w_sents[0, :3])
    with pytest.raises(ValueError, match="^word_weights: "):
        plot.hierarchy_weights(w_words, w_sents)
