"""GPU performance targets of the attnzoo CUDA kernels, timed against their peers in one run.

Run on an H100 after building with CUDA (see benchmarks/run_gpu.sh). Prints one table:
target, ours, peer, ratio, goal, PASS/FAIL, plus the floors (FLOPs / measured matmul rate,
bytes / measured bandwidth). Timings: CUDA events, synchronised, after warmup; median of
``--iters`` runs. ``--quick`` shrinks the problems (smoke test, targets not meaningful).

Exit status: 1 when a measured target FAILs (the list of misses, each with by how much, ends the
output), else 0; a target that could not be measured ("n/a") does not fail, and neither does
anything under ``--quick`` (its misses are listed, but the exit status is 0).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import torch
import torch.nn.functional as F

import attnzoo.ops as ops

DEV = "cuda"


def timeit(fn, warmup=3, iters=10) -> float:
    """Median milliseconds of fn() over iters runs (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def peak_mem(fn) -> int:
    """Peak bytes allocated by fn() above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def machine_rates(iters):
    n = 8192
    a = torch.randn(n, n, device=DEV, dtype=torch.float16)
    b = torch.randn(n, n, device=DEV, dtype=torch.float16)
    t = timeit(lambda: a @ b, iters=iters)
    fp16_flops = 2 * n**3 / (t * 1e-3)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    a32, b32 = a.float(), b.float()
    t = timeit(lambda: a32 @ b32, iters=iters)
    torch.backends.cuda.matmul.allow_tf32 = prev
    fp32_flops = 2 * n**3 / (t * 1e-3)
    x = torch.empty(256 * 2**20, device=DEV, dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    t = timeit(lambda: y.copy_(x), iters=iters)
    bw = 2 * x.numel() * 4 / (t * 1e-3)
    torch.cuda.empty_cache()
    return fp16_flops, fp32_flops, bw


ROWS = []
MISSES = []  # (target, what missed and by how much) of the rows that FAILed


def at_least(what, value, goal, unit="x"):
    """None when value >= goal, else "what 0.42x < 0.50x (16% short)"."""
    if value >= goal:
        return None
    return f"{what} {value:.2f}{unit} < {goal:.2f}{unit} ({100 * (1 - value / goal):.0f}% short)"


def at_most(what, value, goal, unit="x"):
    """None when value <= goal, else "what 1.56x > 1.30x (20% over)"."""
    if value <= goal:
        return None
    return f"{what} {value:.2f}{unit} > {goal:.2f}{unit} ({100 * (value / goal - 1):.0f}% over)"


def row(target, ours_ms, peer_name, peer_ms, goal, misses, floor_ms=None, note=""):
    """misses: the failed checks' messages (PASS when empty), or None when not measured (n/a)."""
    ok = None if misses is None else not [m for m in misses if m]
    if ok is False:
        MISSES.append((target, "; ".join(m for m in misses if m)))
    ROWS.append((target, ours_ms, peer_name, peer_ms, goal, ok, floor_ms, note))


def print_misses(quick=False) -> int:
    """Prints which measured targets FAILed and by how much; the exit status (1 when any did,
    except under --quick, whose problems are too small for the targets to mean anything)."""
    if not MISSES:
        print(f"all {sum(r[5] is not None for r in ROWS)} measured targets PASS")
        return 0
    print(f"FAILED {len(MISSES)} of {sum(r[5] is not None for r in ROWS)} measured targets:")
    for target, miss in MISSES:
        print(f"  {target}: {miss}")
    if quick:
        print("(--quick: small problems, targets not meaningful; exit status 0)")
        return 0
    return 1


def fmt_ms(x):
    return "-" if x is None else (f"{x:.3f}" if isinstance(x, (int, float)) else str(x))


def print_table():
    hdr = ("target", "ours ms", "peer", "peer ms", "goal", "result", "floor ms", "note")
    lines = [hdr] + [
        (t, fmt_ms(o), p, fmt_ms(pm), g, "PASS" if ok else ("FAIL" if ok is False else "n/a"), fmt_ms(f), n)
        for t, o, p, pm, g, ok, f, n in ROWS
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(hdr))]
    for k, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def bench_scaled_dot(args, rates):
    fp16_flops, _, bw = rates
    BH, N, d = args.heads, args.n, 64
    q, k, v = (torch.randn(BH, N, d, device=DEV, dtype=torch.float16) for _ in range(3))
    scale = 1 / math.sqrt(d)
    fused = lambda: torch.ops.attnzoo.bilinear_fwd(q, k, v, None, scale, None, None, None, None, 0, False, -1)  # noqa: E731
    q4, k4, v4 = (x.view(16, BH // 16, N, d) for x in (q, k, v))
    sdpa = lambda: F.scaled_dot_product_attention(q4, k4, v4, scale=scale)  # noqa: E731
    t_ours, t_sdpa = timeit(fused, iters=args.iters), timeit(sdpa, iters=args.iters)
    flops = 4 * BH * N * N * d
    floor = max(flops / fp16_flops, 4 * BH * N * d * 2 / bw) * 1e3
    row(
        f"scaled_dot fwd fp16 {BH}h N={N} d={d}",
        t_ours,
        "torch SDPA",
        t_sdpa,
        ">=50% of SDPA throughput",
        [at_least("throughput vs SDPA", t_sdpa / t_ours, 0.5)],
        floor,
        f"{t_sdpa / t_ours:.2f}x of SDPA throughput",
    )

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    g = torch.randn_like(q)

    def fused_fb():
        out, _, _ = ops.bilinear_attention(qg, kg, vg, None, scale)
        out.backward(g)

    q4g, k4g, v4g = (x.view(16, BH // 16, N, d) for x in (qg, kg, vg))
    g4 = g.view(16, BH // 16, N, d)

    def sdpa_fb():
        F.scaled_dot_product_attention(q4g, k4g, v4g, scale=scale).backward(g4)

    t_ours, t_sdpa = timeit(fused_fb, iters=args.iters), timeit(sdpa_fb, iters=args.iters)
    floor = 3.5 * flops / fp16_flops * 1e3  # fwd + bwd (recompute) ~ 3.5x the forward matmul FLOPs
    row(
        f"scaled_dot fwd+bwd fp16 {BH}h N={N}",
        t_ours,
        "torch SDPA",
        t_sdpa,
        ">=35% of SDPA throughput",
        [at_least("throughput vs SDPA", t_sdpa / t_ours, 0.35)],
        floor,
        f"{t_sdpa / t_ours:.2f}x of SDPA throughput",
    )
    torch.cuda.empty_cache()
    return t_ours


def bench_variants(args, rates, t_scaled):
    """nadaraya_watson / cosine / general mapped onto bilinear_fwd, vs plain scaled_dot fused."""
    BH, N, d = args.heads, args.n, 64
    q, k, v = (torch.randn(BH, N, d, device=DEV, dtype=torch.float16) for _ in range(3))
    scale = 1 / math.sqrt(d)
    t_ref = timeit(
        lambda: torch.ops.attnzoo.bilinear_fwd(q, k, v, None, scale, None, None, None, None, 0, False, -1),
        iters=args.iters,
    )
    W = torch.randn(d, d, device=DEV, dtype=torch.float16) / math.sqrt(d)

    def nadaraya_watson():  # -(x_i - x_j)^2 / 2 = x_i.x_j - |x_j|^2 / 2 (+ a per-query constant)
        kb = (-0.5 * k.float().pow(2).sum(-1)).to(k.dtype)
        return torch.ops.attnzoo.bilinear_fwd(q, k, v, kb, 1.0, None, None, None, None, 0, False, -1)

    def cosine():
        qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return torch.ops.attnzoo.bilinear_fwd(qn, kn, v, None, 1.0, None, None, None, None, 0, False, -1)

    def general():
        return torch.ops.attnzoo.bilinear_fwd(q @ W, k, v, None, scale, None, None, None, None, 0, False, -1)

    for name, fn in (("nadaraya_watson", nadaraya_watson), ("cosine", cosine), ("general", general)):
        t = timeit(fn, iters=args.iters)
        row(
            f"{name} fwd fp16 {BH}h N={N}",
            t,
            "scaled_dot fused",
            t_ref,
            "<=1.3x scaled_dot fused",
            [at_most("time vs scaled_dot fused", t / t_ref, 1.3)],
            None,
            f"{t / t_ref:.2f}x",
        )
    torch.cuda.empty_cache()


def bench_additive(args, rates):
    _, fp32_flops, bw = rates
    B, N, H = args.add_batch, args.n, 64
    a = torch.randn(B, N, H, device=DEV)  # W_q q
    b = torch.randn(B, N, H, device=DEV)  # W_k k
    w = torch.randn(H, device=DEV)
    v = torch.randn(B, N, 64, device=DEV)
    fused = lambda: torch.ops.attnzoo.elementwise_fwd(a, b, w, v, 0, 0, None, None, None, None, 0, False, -1)  # noqa: E731

    def d2l(bb=None):  # d2l.ai AdditiveAttention.forward on projected queries/keys
        aa, bk, vv = (a, b, v) if bb is None else (a[bb : bb + 1], b[bb : bb + 1], v[bb : bb + 1])
        features = torch.tanh(aa.unsqueeze(2) + bk.unsqueeze(1))
        scores = features @ w
        return torch.bmm(torch.softmax(scores, dim=-1), vv)

    t_ours = timeit(fused, iters=args.iters)
    m_ours = peak_mem(fused)
    note = ""
    try:
        t_peer = timeit(d2l, warmup=1, iters=max(2, args.iters // 3))
        m_peer = peak_mem(d2l)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        note = "eager OOM at full batch: timed batch 1 x B, memory from batch 1 x B; "
        t_peer = B * timeit(lambda: d2l(0), warmup=1, iters=max(2, args.iters // 3))
        m_peer = B * peak_mem(lambda: d2l(0))
    torch.cuda.empty_cache()
    tanh_flops = 8 * B * N * N * H  # ~ add + tanh (counted as 6) + fma per (i, j, h)
    floor = max(tanh_flops / fp32_flops, (3 * B * N * H + B * N * 64) * 4 / bw) * 1e3
    mem_pct = 100 * m_ours / max(m_peer, 1)
    misses = [at_least("speed-up vs d2l eager", t_peer / t_ours, 10)]
    if not m_ours < 0.01 * m_peer:
        misses.append(f"memory {mem_pct:.2f}% of d2l eager >= 1% ({mem_pct - 1:.2f} points over)")
    row(
        f"additive fwd fp32 B={B} N={N} H=d=64",
        t_ours,
        "d2l eager",
        t_peer,
        ">=10x faster, <1% memory",
        misses,
        floor,
        note + f"{t_peer / t_ours:.1f}x faster, memory {m_ours / 2**20:.1f} MiB vs {m_peer / 2**20:.0f} MiB "
        f"({mem_pct:.2f}%)",
    )


def bench_window(args, rates):
    fp16_flops, _, bw = rates
    BH, N, d, W = args.heads, args.window_n, 64, 256
    q, k, v = (torch.randn(16, BH // 16, N, d, device=DEV, dtype=torch.float16) for _ in range(3))
    scale = 1 / math.sqrt(d)
    q3, k3, v3 = (x.view(BH, N, d) for x in (q, k, v))
    fused = lambda: torch.ops.attnzoo.bilinear_fwd(q3, k3, v3, None, scale, None, None, None, None, 0, False, W)  # noqa: E731
    t_ours = timeit(fused, iters=args.iters)
    note = ""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def sliding(b, h, q_idx, kv_idx):
            return (q_idx - kv_idx).abs() <= W

        bm = create_block_mask(sliding, B=None, H=None, Q_LEN=N, KV_LEN=N, device=DEV)
        flex = torch.compile(flex_attention, dynamic=False)
        t_peer = timeit(lambda: flex(q, k, v, block_mask=bm, scale=scale), warmup=3, iters=args.iters)
        misses = [at_most("time vs FlexAttention", t_ours / t_peer, 1.0)]
        note = f"{t_ours / t_peer:.2f}x the FlexAttention time"
    except Exception as exc:  # noqa: BLE001 - report, don't die
        t_peer, misses, note = None, None, f"FlexAttention unavailable: {type(exc).__name__}: {exc}"[:120]
    flops = 4 * BH * N * (2 * W + 1) * d
    floor = max(flops / fp16_flops, 4 * BH * N * d * 2 / bw) * 1e3
    row(
        f"local window +-{W} fp16 {BH}h N={N}",
        t_ours,
        "FlexAttention (compiled, block mask)",
        t_peer,
        "<= FlexAttention time",
        misses,
        floor,
        note,
    )
    torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small problems (smoke test)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--only", default="", help="comma list of: scaled_dot,variants,additive,window")
    args = ap.parse_args()
    args.heads, args.n, args.window_n, args.add_batch = (256, 4096, 16384, 8) if not args.quick else (32, 1024, 2048, 2)
    if not torch.cuda.is_available() or "cuda" not in ops.compiled_devices():
        raise SystemExit(f"needs a GPU and the CUDA extension (compiled_devices={ops.compiled_devices()})")
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  build {ops.build_info()}")
    rates = machine_rates(args.iters)
    print(
        f"measured: fp16 matmul {rates[0] / 1e12:.0f} TFLOP/s, fp32 matmul {rates[1] / 1e12:.1f} TFLOP/s, "
        f"copy bandwidth {rates[2] / 1e9:.0f} GB/s"
    )
    only = set(filter(None, args.only.split(",")))
    want = lambda name: not only or name in only  # noqa: E731
    t_scaled = None
    if want("scaled_dot"):
        t_scaled = bench_scaled_dot(args, rates)
    if want("variants"):
        bench_variants(args, rates, t_scaled)
    if want("additive"):
        bench_additive(args, rates)
    if want("window"):
        bench_window(args, rates)
    print()
    print_table()
    print()
    return print_misses(quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
