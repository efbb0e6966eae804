"""CPU performance targets of the fused ops (pytest-benchmark, 2 threads).

Quick set: ``pytest benchmarks/test_targets_cpu.py``. Every target, slow-marked sides (the eager
peers, N = 4096) included: ``pytest benchmarks/test_targets_cpu.py -m "slow or not slow" -s``
(part of ``make bench``). Each time is the best (min) of a few rounds. A target is checked in the
test that measures its second side: a miss fails that test, saying by how much
("additive fused / d2l eager N=1024: 0.061 > 0.050 (22% over)"). ``test_report`` prints the
ratios of the run. Under ``--benchmark-disable`` (CI) every benchmark runs once as a smoke test,
nothing is timed or checked, and the report says "not measured (benchmarks disabled)".
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import attnzoo.ops as ops
from attnzoo.ops import reference as ref
from attnzoo.tools.targets import Board, check_target, timing_enabled

if not ops.EXTENSION:
    pytest.skip(f"attnzoo._C is not built ({ops.EXTENSION_STATUS})", allow_module_level=True)

THREADS = 2


@pytest.fixture(autouse=True)
def _setup(request):
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow: select with -m 'slow or not slow'")
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)


def run(benchmark, name, fn, rounds=5, warmup=1):
    BOARD.run(benchmark, name, fn, rounds, warmup)


def qkv(N, B=8, D=64, grad=False):
    return [torch.randn(1, B, N, D, requires_grad=grad) for _ in range(3)]


def ours_sdp(q, k, v, **kw):
    B, N, D = q.shape[1:]
    return ops.bilinear_attention(q.view(B, N, D), k.view(B, N, D), v.view(B, N, D), scale=D**-0.5, **kw)


# --- scaled dot product, (1, 8, N, 64) --------------------------------------------------------
SDP_SIZES = [1024, pytest.param(4096, marks=pytest.mark.slow)]


@pytest.mark.parametrize("N", SDP_SIZES)
@pytest.mark.parametrize("impl", ["sdpa", "fused"])
def test_sdp_forward(benchmark, impl, N):
    benchmark.group = f"sdp forward (1, 8, {N}, 64)"
    q, k, v = qkv(N)
    fn = (lambda: F.scaled_dot_product_attention(q, k, v)) if impl == "sdpa" else (lambda: ours_sdp(q, k, v))
    run(benchmark, f"sdp_fwd_{impl}_{N}", fn, rounds=10 if N == 1024 else 3)


@pytest.mark.parametrize("impl", ["sdpa", "fused"])
def test_sdp_forward_backward(benchmark, impl):
    N = 1024
    benchmark.group = f"sdp forward+backward (1, 8, {N}, 64)"
    q, k, v = qkv(N, grad=True)
    if impl == "sdpa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()
    else:
        fn = lambda: ours_sdp(q, k, v)[0].sum().backward()
    run(benchmark, f"sdp_fwdbwd_{impl}_{N}", fn, rounds=10)


# --- additive, batch 8, dim 64, hidden 64 -----------------------------------------------------
def d2l_additive(queries, keys, values, W_q, W_k, w_v, valid_lens):
    """The d2l-style eager additive attention (materialises (B, Nq, Nk, H))."""
    features = torch.tanh((queries @ W_q.T).unsqueeze(2) + (keys @ W_k.T).unsqueeze(1))
    scores = (features @ w_v).squeeze(-1)
    mask = torch.arange(scores.shape[-1]).view(1, 1, -1) < valid_lens.view(-1, 1, 1)
    weights = torch.softmax(scores.masked_fill(~mask, -1e6), dim=-1)
    return torch.bmm(weights, values)


def additive_inputs(N, B=8, D=64, H=64):
    q, k, v = (torch.randn(B, N, D) for _ in range(3))
    W_q, W_k, w_v = torch.randn(H, D) / 8, torch.randn(H, D) / 8, torch.randn(H, 1)
    return q, k, v, W_q, W_k, w_v, torch.full((B,), N)


@pytest.mark.parametrize("impl", [pytest.param("eager", marks=pytest.mark.slow), "fused"])
def test_additive_forward(benchmark, impl):
    N = 1024
    benchmark.group = f"additive forward (8, {N}, 64), hidden 64"
    q, k, v, W_q, W_k, w_v, vl = additive_inputs(N)
    if impl == "eager":
        fn = lambda: d2l_additive(q, k, v, W_q, W_k, w_v, vl)
        rounds = 2
    else:
        a, b = q @ W_q.T, k @ W_k.T  # the projections are inputs of the fused op
        fn = lambda: ops.additive_attention(a, b, w_v.view(-1), v)
        rounds = 5
    run(benchmark, f"additive_fwd_{impl}_{N}", fn, rounds=rounds)


_ISA_SCRIPT = textwrap.dedent(
    """
    import time, torch, attnzoo._C, attnzoo.ops as ops
    torch.set_num_threads({threads})
    torch.manual_seed(0)
    B, N, D, H = 8, {N}, 64, 64
    q, k, v = (torch.randn(B, N, D) for _ in range(3))
    W_q, W_k, w = torch.randn(H, D) / 8, torch.randn(H, D) / 8, torch.randn(H)
    a, b = q @ W_q.T, k @ W_k.T
    best = float("inf")
    for r in range({rounds} + 1):  # first round: warm-up
        t = time.perf_counter()
        ops.additive_attention(a, b, w, v)
        t = time.perf_counter() - t
        if r:
            best = min(best, t)
    print(attnzoo._C.build_info()["cpu_isa_runtime"], best)
    """
)


@pytest.mark.parametrize("isa", ["avx2"])
def test_additive_forward_forced_isa(request, isa):
    """The fused additive forward (N = 1024) with the dispatched ISA forced (ATTNZOO_CPU_ISA), in a
    fresh process (the ISA is chosen once per process); same timing as test_additive_forward.
    Under --benchmark-disable: one timed call (smoke), not recorded."""
    N = 1024
    timed = timing_enabled(request.config)
    script = _ISA_SCRIPT.format(threads=THREADS, N=N, rounds=5 if timed else 1)
    env = dict(os.environ, ATTNZOO_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    used, seconds = res.stdout.split()
    assert used == isa
    if not timed:
        return
    print(f"\nadditive forward N={N}, ATTNZOO_CPU_ISA={isa}: {float(seconds) * 1e3:.1f} ms")
    BOARD.record(f"additive_fwd_fused_{isa}_{N}", float(seconds), request.node.nodeid)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, time, torch
    sys.path.insert(0, {bench!r})
    torch.set_num_threads({threads})
    {setup}
    warmup()  # allocator and threads
    with open("/proc/self/statm") as f:  # current RSS (the high-water mark may predate the inputs)
        before = int(f.read().split()[1]) * resource.getpagesize() // 1024
    t = time.perf_counter()
    call()
    t = time.perf_counter() - t
    # Peak RSS of this process image: VmHWM (ru_maxrss would also count the forking pytest
    # process's RSS, which Linux carries into the child's maximum across fork + exec).
    with open("/proc/self/status") as f:
        after = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print((after - before) * 1024, t)
    """
)


def peak_rss_delta(setup: str) -> tuple[float, float]:
    """(peak RSS growth in bytes, seconds) of ``call()`` in a fresh process; ``setup`` (one line, may use
    this module's helpers) defines ``warmup`` and ``call``."""
    script = _MEMORY_SCRIPT.format(bench=os.path.dirname(os.path.abspath(__file__)), threads=THREADS, setup=setup)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    extra, seconds = map(float, res.stdout.split())
    return extra, seconds


def additive_call(N):
    """(warmup, call) of the additive op, batch 8, hidden = D = 64, N keys and queries."""
    a, b, v, w = torch.randn(8, N, 64), torch.randn(8, N, 64), torch.randn(8, N, 64), torch.randn(64)
    return (lambda: ops.additive_attention(a[:, :64], b[:, :64], w, v[:, :64]),
            lambda: ops.additive_attention(a, b, w, v))


@pytest.mark.slow
def test_additive_memory_8192(request):
    """N = 8192 runs with < 1 GiB extra memory (peak RSS delta of a fresh process). The memory is
    asserted in every run; the time is recorded only when benchmarks are timed."""
    extra, seconds = peak_rss_delta("from test_targets_cpu import additive_call; warmup, call = additive_call(8192)")
    print(f"\nadditive N=8192: {seconds:.2f} s, peak RSS delta {extra / 2**20:.1f} MiB")
    assert extra < 2**30, f"additive N=8192: peak RSS delta {extra / 2**20:.0f} MiB >= 1024 MiB"
    if timing_enabled(request.config):
        BOARD.record("additive_fwd_fused_8192", seconds, request.node.nodeid)


# --- Nadaraya-Watson: scalar inputs, n = 10 000 ------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "fused"])
def test_nadaraya_watson(benchmark, impl):
    n, w = 10_000, 1.7
    benchmark.group = f"nadaraya-watson n={n}"
    x = torch.rand(1, n, 1) * 5
    xk = torch.rand(1, n, 1) * 5
    yk = torch.sin(xk)
    key_bias = -0.5 * w * w * xk.view(1, n) ** 2  # softmax_j(-(w(x_i - x_j))^2 / 2) up to a row constant
    if impl == "sdpa":
        mask = key_bias.view(1, 1, 1, n)
        fn = lambda: F.scaled_dot_product_attention(
            x.view(1, 1, n, 1), xk.view(1, 1, n, 1), yk.view(1, 1, n, 1), attn_mask=mask, scale=w * w
        )
    else:  # the exact form the variant uses: -(w^2 / 2) (x_i - x_j)^2, from the differences
        wh = torch.tensor([-0.5 * w * w])
        fn = lambda: ops.elementwise_attention(x, xk, wh, yk, term="sq_diff")
    run(benchmark, f"nw_{impl}", fn, rounds=10)


# --- local window 64 (scaled dot), N = 1024 -> 8192 -------------------------------------------
@pytest.mark.parametrize("N", [1024, 8192])
def test_local_window(benchmark, N):
    benchmark.group = "local window 64, (1, 8, N, 64)"
    q, k, v = qkv(N)
    run(benchmark, f"local_{N}", lambda: ours_sdp(q, k, v, window=64), rounds=10)


# --- hard pooling, N = 4096 ---------------------------------------------------------------------
@pytest.mark.parametrize("impl", [pytest.param("eager", marks=pytest.mark.slow), "fused"])
def test_hard(benchmark, impl):
    N = 4096
    benchmark.group = f"hard (1, 8, {N}, 64)"
    q, k, v = (x.view(8, N, 64) for x in qkv(N))
    if impl == "eager":
        fn = lambda: ref.bilinear_fwd(q, k, v, None, 0.125, None, None, None, None, 1, False, -1)
        rounds = 2
    else:
        fn = lambda: ops.bilinear_attention(q, k, v, scale=0.125, pooling="hard")
        rounds = 3
    run(benchmark, f"hard_{impl}_{N}", fn, rounds=rounds)


# --- the Laplace plugin (examples/attnzoo-laplace): a third-party score on the elementwise |a - b| term ---
_LAPLACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "attnzoo-laplace",
                        "attnzoo_laplace", "__init__.py")


def laplace(backend):
    """The example plugin's score under soft pooling, loaded from its file (not registered)."""
    import importlib.util

    from attnzoo.variants import PooledAttention

    spec = importlib.util.spec_from_file_location("bench_laplace_plugin", _LAPLACE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return PooledAttention(mod.Laplace(bandwidth=8.0), "soft", backend=backend)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_laplace(benchmark, impl):
    benchmark.group = "laplace plugin, (2, 1024, 64)"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1024, 64, generator=g) for _ in range(3))
    attn = laplace(impl)
    run(benchmark, f"laplace_{impl}_1024", lambda: attn(q, k, v), rounds=2 if impl == "reference" else 5)


def laplace_call(N):
    """(warmup, call) of the Laplace plugin fused, batch 2, D 64."""
    attn = laplace("fused")
    q, k, v = (torch.randn(2, N, 64) for _ in range(3))
    return lambda: attn(q[:, :64], k[:, :64], v[:, :64]), lambda: attn(q, k, v)


@pytest.mark.slow
def test_laplace_memory_8192():
    """The Laplace plugin at N = 8192 (batch 2, D 64) runs fused with < 256 MiB extra peak RSS (the
    reference would need 2 x 8192^2 x 64 x 4 B = 32 GiB for its broadcast)."""
    extra, seconds = peak_rss_delta("from test_targets_cpu import laplace_call; warmup, call = laplace_call(8192)")
    print(f"\nlaplace N=8192: {seconds:.2f} s, peak RSS delta {extra / 2**20:.1f} MiB")
    assert extra < 256 * 2**20, f"laplace N=8192: peak RSS delta {extra / 2**20:.0f} MiB >= 256 MiB"


# --- a third-party forward-only score (no fused form) on the blockwise backend ---------------------------
class BroadcastL2(torch.nn.Module):
    """``s = -|q - k|^2`` written as a broadcast, the way a user writes a score: (..., Nq, Nk, D) inside."""

    def forward(self, query, key):
        return -((query.unsqueeze(-2) - key.unsqueeze(-3)) ** 2).sum(-1)


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_forward_only_score(benchmark, impl):
    from attnzoo.variants import PooledAttention

    benchmark.group = "forward-only score, (2, 1024, 32)"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1024, 32, generator=g) for _ in range(3))
    attn = PooledAttention(BroadcastL2(), "soft", backend=impl)
    run(benchmark, f"fwdonly_{impl}_1024", lambda: attn(q, k, v), rounds=3)


def forward_only_call(N):
    """(warmup, call) of the forward-only score on auto (blockwise at this size), batch 2, D 32."""
    from attnzoo.variants import PooledAttention

    attn = PooledAttention(BroadcastL2(), "soft")
    q, k, v = (torch.randn(2, N, 32) for _ in range(3))
    assert attn.explain(q, k, v).startswith("blockwise"), attn.explain(q, k, v)
    return lambda: attn(q[:, :64], k[:, :64], v[:, :64]), lambda: attn(q, k, v)


@pytest.mark.slow
def test_blockwise_memory_4096():
    """A forward-only score at N = 4096 (batch 2, D 32) runs on auto (blockwise) with < 512 MiB extra
    peak RSS; the reference's broadcast alone would be 2 x 4096^2 x 32 x 4 B = 4 GiB."""
    extra, seconds = peak_rss_delta("from test_targets_cpu import forward_only_call; "
                                    "warmup, call = forward_only_call(4096)")
    print(f"\nblockwise forward-only N=4096: {seconds:.2f} s, peak RSS delta {extra / 2**20:.1f} MiB")
    assert extra < 512 * 2**20, f"blockwise N=4096: peak RSS delta {extra / 2**20:.0f} MiB >= 512 MiB"


# --- positions: scaled_dot with position="rope", ALiBi (a slope per head), a (H, N, N) bias, fused ---------
@pytest.mark.parametrize("position", [None, "rope", "alibi", "bias"])
def test_position_overhead(benchmark, position):
    import attnzoo
    from attnzoo.positions import alibi_slopes
    from attnzoo.variants import PooledAttention

    benchmark.group = "scaled_dot module, (1, 8, 2048, 64)"
    q, k, v = qkv(2048)
    kw = {}
    if position == "alibi":  # the heads are the batch dim: one slope each, 2^(-8h/8)
        score = attnzoo.registry_instance().score("scaled_dot").cls()
        attn = PooledAttention(score, "soft", alibi=alibi_slopes(8), backend="fused")
    else:
        attn = attnzoo.create("scaled_dot", position=position if position == "rope" else None, backend="fused")
    if position == "bias":  # T5-style: one (N, N) bias per head, read in place
        kw["bias"] = torch.randn(8, 2048, 2048)
    with torch.no_grad():
        run(benchmark, f"sdp_module_{position or 'plain'}_2048", lambda: attn(q, k, v, **kw), rounds=5)


# --- attention entropy (return_entropy=True): the running sum in the same pass, against the plain call --------
@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("variant", ["scaled_dot", "additive"])
def test_entropy_overhead(benchmark, variant, entropy):
    import attnzoo

    N = 2048 if variant == "scaled_dot" else 1024
    benchmark.group = f"{variant} module, (1, 8, {N}, 64), return_entropy"
    q, k, v = qkv(N)
    opts = dict(query_dim=64, key_dim=64, hidden_dim=64) if variant == "additive" else {}
    torch.manual_seed(0)
    attn = attnzoo.create(variant, backend="fused", **opts)
    with torch.no_grad():
        run(benchmark, f"{variant}_module_{'entropy' if entropy else 'plain'}_{N}",
            lambda: attn(q, k, v, return_entropy=entropy), rounds=5)


# --- targets --------------------------------------------------------------------------------------
# (name, numerator, denominator, bound): numerator / denominator <= bound
TARGETS = [
    ("sdp forward N=1024 / SDPA", "sdp_fwd_fused_1024", "sdp_fwd_sdpa_1024", 1.25),
    ("sdp forward N=4096 / SDPA", "sdp_fwd_fused_4096", "sdp_fwd_sdpa_4096", 1.0),
    ("sdp fwd+bwd N=1024 / SDPA", "sdp_fwdbwd_fused_1024", "sdp_fwdbwd_sdpa_1024", 0.9),
    ("additive fused / d2l eager N=1024", "additive_fwd_fused_1024", "additive_fwd_eager_1024", 1 / 20),
    ("nadaraya-watson fused / SDPA", "nw_fused", "nw_sdpa", 1.0),
    ("local window N=8192 / N=1024", "local_8192", "local_1024", 10.0),
    ("hard fused / eager N=4096", "hard_fused_4096", "hard_eager_4096", 1 / 3),
    ("laplace fused / reference N=1024", "laplace_fused_1024", "laplace_reference_1024", 1 / 20),
    ("forward-only blockwise / reference N=1024", "fwdonly_blockwise_1024", "fwdonly_reference_1024", 2.0),
    ("rope / plain scaled_dot module N=2048", "sdp_module_rope_2048", "sdp_module_plain_2048", 1.15),
    ("alibi / plain scaled_dot module N=2048", "sdp_module_alibi_2048", "sdp_module_plain_2048", 1.15),
    ("entropy / plain scaled_dot module N=2048", "scaled_dot_module_entropy_2048", "scaled_dot_module_plain_2048",
     1.25),
    ("entropy / plain additive module N=1024", "additive_module_entropy_1024", "additive_module_plain_1024", 1.15),
]


# Informational ratios (no bound): the run-time dispatched ISA against forced AVX2.
INFO = [
    ("(8, N, N) bias / plain scaled_dot N=2048", "sdp_module_bias_2048", "sdp_module_plain_2048"),
    ("additive fused AVX2 / d2l eager N=1024", "additive_fwd_fused_avx2_1024", "additive_fwd_eager_1024"),
    ("additive fused default / AVX2 N=1024", "additive_fwd_fused_1024", "additive_fwd_fused_avx2_1024"),
]


BOARD = Board(TARGETS, INFO, 'every target, slow-marked sides included: -m "slow or not slow" (make bench)')


# --- the target check itself, on fabricated numbers (no timing) ----------------------------------
def test_check_target():
    assert check_target("additive fused / d2l eager", 0.061, 1.0, 1 / 20) == (
        "additive fused / d2l eager: 0.061 > 0.050 (22% over)"
    )
    assert check_target("sdp", 1.3, 1.0, 1.25) == "sdp: 1.300 > 1.250 (4.0% over)"
    assert check_target("sdp", 1.0, 1.0, 1.25) is None
    assert check_target("bound itself", 1.25, 1.0, 1.25) is None
    assert check_target("zero time", 1.0, 0.0, 1.0) == "zero time: inf > 1.000 (inf% over)"


def test_missed_target_fails_the_test_of_its_second_side():
    board = Board([("x / y", "x", "y", 1 / 20)])
    board.record("y", 1.0, "test_y")  # first side: nothing to check yet
    with pytest.raises(pytest.fail.Exception, match=r"x / y: 0\.061 > 0\.050 \(22% over\) \[x 61\.000 ms / y"):
        board.record("x", 0.061, "test_x")
    assert board.failed_in == {"x / y": "test_x"}
    board.record("x", 0.04, "test_x")  # met: no failure
    board.results["x"] = 0.061
    assert "MISSED (22% over), failed test_x" in board.report_lines(True)[0]
    assert Board(board.targets).report_lines(False)[0].endswith("not measured (benchmarks disabled)")
    fresh = Board(board.targets, more="more")
    fresh.results["y"] = 1.0
    assert "not measured in this run (no x)" in fresh.report_lines(True)[0] and fresh.report_lines(True)[-1] == "more"


def test_report(request):
    """Prints the ratios of this run (each target was already checked where its second side ran)."""
    from attnzoo import _C

    lines = [f"dispatched CPU ISA: {_C.build_info().get('cpu_isa_runtime', 'n/a')}"]
    lines += BOARD.report_lines(timing_enabled(request.config))
    print("\n" + "\n".join(lines))
