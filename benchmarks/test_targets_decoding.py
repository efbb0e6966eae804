"""CPU targets where attention is called in models and decoders: small sizes, decoder steps, KV caches, grouped
heads (pytest-benchmark, float32, 2 threads; each side the best of a few rounds of many calls).

``pytest benchmarks/test_targets_decoding.py -s`` times every side and prints the report (``make bench`` runs
it); under ``--benchmark-disable`` (CI) each side runs once as a smoke test. A missed target fails the test of
its second side, with both times.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnzoo
import attnzoo.ops as ops
from attnzoo.tools.targets import Board, timing_enabled

if not ops.EXTENSION:
    pytest.skip(f"attnzoo._C is not built ({ops.EXTENSION_STATUS})", allow_module_level=True)

THREADS = 2


@pytest.fixture(autouse=True)
def _setup():
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)


def run(benchmark, name, fn, rounds=7, iterations=1):
    BOARD.run(benchmark, name, fn, rounds=rounds, warmup=1, iterations=iterations)


# --- the scaled_dot module on small inputs, against SDPA's fused CPU kernel (4-D input) ------------------------
@pytest.mark.parametrize("N", [16, 64])
@pytest.mark.parametrize("impl", ["sdpa", "module"])
def test_small_scaled_dot(benchmark, impl, N):
    benchmark.group = f"scaled_dot forward (2, {N}, 32)"
    q, k, v = (torch.randn(2, N, 32) for _ in range(3))
    if impl == "sdpa":
        q4, k4, v4 = (t.unsqueeze(1) for t in (q, k, v))
        fn = lambda: F.scaled_dot_product_attention(q4, k4, v4)  # noqa: E731
    else:
        attn = attnzoo.create("scaled_dot")
        fn = lambda: attn(q, k, v)  # noqa: E731
    run(benchmark, f"small_{impl}_{N}", fn, iterations=200)


# --- multihead against torch.nn.MultiheadAttention (E 256, H 8, batch 2), same weights --------------------------
def _mha_pair():
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(256, 8, batch_first=True)
    return ref, attnzoo.from_torch(ref)


@pytest.mark.parametrize("N", [16, 64, 1024])
@pytest.mark.parametrize("direction", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("impl", ["torch", "attnzoo"])
def test_multihead(benchmark, impl, direction, N):
    benchmark.group = f"multihead {direction} E 256, H 8, (2, {N})"
    ref, ours = _mha_pair()
    x = torch.randn(2, N, 256, requires_grad=direction == "fwdbwd")
    if impl == "torch":
        call = lambda: ref(x, x, x, need_weights=False)[0]  # noqa: E731
    else:
        call = lambda: ours(x)  # noqa: E731
    if direction == "fwd":
        ref.eval(), ours.eval()

        def fn():
            with torch.no_grad():
                call()
    else:
        def fn():
            call().sum().backward()
    run(benchmark, f"mha_{direction}_{impl}_{N}", fn, iterations=100 if N == 16 else 20 if N == 64 else 1)


# --- one additive decoder step: batch 64, one query, Nk encoder states, hidden 256 -----------------------------
def d2l_additive_step(attn_params, q, k, v, valid_lens):
    """d2l's AdditiveAttention forward (its masked softmax, -1e6 fill), projecting the keys every step."""
    W_q, W_k, w_v = attn_params
    features = torch.tanh(F.linear(q, W_q).unsqueeze(2) + F.linear(k, W_k).unsqueeze(1))
    scores = F.linear(features, w_v).squeeze(-1)
    mask = torch.arange(scores.shape[-1]).view(1, 1, -1) < valid_lens.view(-1, 1, 1)
    return torch.bmm(torch.softmax(scores.masked_fill(~mask, -1e6), dim=-1), v)


@pytest.mark.parametrize("nk", [10, 50])
@pytest.mark.parametrize("impl", ["d2l", "attnzoo", "prepared"])
def test_additive_decoder_step(benchmark, impl, nk):
    benchmark.group = f"additive decoder step, batch 64, Nq 1, Nk {nk}, hidden 256"
    attn = attnzoo.create("additive", query_dim=256, key_dim=256, hidden_dim=256).eval()
    q, k, v = torch.randn(64, 1, 256), torch.randn(64, nk, 256), torch.randn(64, nk, 256)
    lens = torch.randint(1, nk + 1, (64,))
    params = (attn.score.W_q.weight, attn.score.W_k.weight, attn.score.w_v.weight)
    with torch.no_grad():
        keys = attn.prepare_keys(k)
        torch.testing.assert_close(attn(q, keys, v, valid_lens=lens), d2l_additive_step(params, q, k, v, lens),
                                   rtol=1e-4, atol=1e-4)
    fns = {"d2l": lambda: d2l_additive_step(params, q, k, v, lens),
           "attnzoo": lambda: attn(q, k, v, valid_lens=lens),
           "prepared": lambda: attn(q, keys, v, valid_lens=lens)}

    def fn():
        with torch.no_grad():
            fns[impl]()

    run(benchmark, f"step_{impl}_{nk}", fn, iterations=20)


# --- multihead decoding, E 256, H 8, batch 2, 256 steps ---------------------------------------------------------
STEPS = 256


def _decode_cache(attn, xs):
    cache = attnzoo.KVCache(capacity=STEPS)
    for t in range(STEPS):
        attn(xs[:, t:t + 1], cache=cache)


def _decode_rerun(attn, xs):
    for t in range(STEPS):
        attn(xs[:, :t + 1])[:, -1:]


def _decode_sdpa(attn, xs):
    """The same projections and a preallocated cache, torch SDPA on it per step (the peer of the cached call)."""
    B, H, d = xs.shape[0], attn.num_heads, attn.head_dim
    K = xs.new_zeros(B, H, STEPS, d)
    V = xs.new_zeros(B, H, STEPS, d)
    for t in range(STEPS):
        x = xs[:, t:t + 1]
        q, k, v = (lin(x).view(B, 1, H, d).transpose(1, 2) for lin in (attn.W_q, attn.W_k, attn.W_v))
        K[:, :, t:t + 1], V[:, :, t:t + 1] = k, v
        o = F.scaled_dot_product_attention(q, K[:, :, :t + 1], V[:, :, :t + 1])
        attn.W_o(o.transpose(1, 2).reshape(B, 1, H * d))


@pytest.mark.parametrize("impl", ["rerun", "sdpa", "cache"])
def test_kv_cache_decoding(benchmark, impl):
    benchmark.group = f"multihead decoding, E 256, H 8, batch 2, {STEPS} steps"
    attn = attnzoo.create("multihead", embed_dim=256, num_heads=8, causal=True).eval()
    xs = torch.randn(2, STEPS, 256)
    fn = {"cache": _decode_cache, "rerun": _decode_rerun, "sdpa": _decode_sdpa}[impl]

    def go():
        with torch.no_grad():
            fn(attn, xs)

    run(benchmark, f"decode_{impl}", go, rounds=3)


# --- grouped-query attention at the op level: H 8, H_kv 2 against H_kv 8, (1, 8, 2048, 64) --------------------
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_gqa(benchmark, kv_heads):
    benchmark.group = "grouped keys (1, 8, 2048, 64)"
    q = torch.randn(8, 2048, 64)
    k, v = torch.randn(kv_heads, 2048, 64), torch.randn(kv_heads, 2048, 64)
    run(benchmark, f"gqa_{kv_heads}", lambda: ops.bilinear_attention(q, k, v, None, 0.125, causal=True), rounds=5)


TARGETS = [
    ("scaled_dot module (2, 16, 32) / SDPA 4-D", "small_module_16", "small_sdpa_16", 1.5),
    ("scaled_dot module (2, 64, 32) / SDPA 4-D", "small_module_64", "small_sdpa_64", 1.2),
    *((f"multihead {d} N={n} / torch MHA", f"mha_{d}_attnzoo_{n}", f"mha_{d}_torch_{n}", 1.0)
      for d in ("fwd", "fwdbwd") for n in (16, 64, 1024)),
    ("additive step Nk=10 / d2l eager", "step_attnzoo_10", "step_d2l_10", 0.5),
    ("additive step Nk=50 / d2l eager", "step_attnzoo_50", "step_d2l_50", 0.5),
    ("additive step, prepared keys, Nk=10 / d2l", "step_prepared_10", "step_d2l_10", 0.25),
    ("additive step, prepared keys, Nk=50 / d2l", "step_prepared_50", "step_d2l_50", 0.25),
    ("decoding with KVCache / re-running the sequence", "decode_cache", "decode_rerun", 0.5),
    ("decoding with KVCache / SDPA on the same cache", "decode_cache", "decode_sdpa", 1.2),
    ("GQA H_kv=2 / H_kv=8 (1, 8, 2048, 64)", "gqa_2", "gqa_8", 1.05),
]
BOARD = Board(TARGETS)


def test_report(request):
    """Prints the ratios of this run (each target was already checked where its second side ran)."""
    print("\n" + "\n".join(BOARD.report_lines(timing_enabled(request.config))))
