"""``attnzoo bench``: time and peak memory of variants x backends x N, as a table and a log-log plot.

Each case runs on random q, k, v ``(batch, N, dim)`` (Nq = Nk = N, float32, no mask): one
check call, then ``torch.utils.benchmark.Timer.blocked_autorange`` (its block-size search is
the warm-up) times blocks of calls for at least ``--min-time`` seconds and ``--repeat``
measurements (the table shows the median and minimum time per call over the measurements),
then one untimed call for peak memory (see :mod:`attnzoo.tools.bench` for what exactly is
measured). ``x fastest`` is the median over the fastest median of the same variant and N.
``--compare`` also prints ``torch.utils.benchmark.Compare``'s grid (backend x N per variant).
Backends: ``reference``, ``fused`` (skipped, with the reason, when not compiled for the
device) and ``peers`` (torch SDPA, ``nn.MultiheadAttention``, d2l's eager additive attention,
for the variants that compute the same function). A case whose peak memory, extrapolated
quadratically from a smaller N, would exceed half the device memory is skipped.

``--quality`` adds the quality tasks of :mod:`attnzoo.tools.quality` (Nadaraya–Watson regression
MSE, associative-recall accuracy and time per training step).

Needs the ``bench`` extra (tqdm; matplotlib for ``bench.png``, not with ``--no-plot``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import bench as B
from . import require_extra

DEFAULT_OUT = "attnzoo-out"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse ``subparsers`` object (``func=run``)."""
    p = subparsers.add_parser(
        "bench", help="compare speed and memory of variants x backends x N (extra: bench)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variants", default=None,
                   help=f"comma-separated variant names or 'all' (default: {','.join(B.QUICK_VARIANTS)})")
    p.add_argument("--backends", default="reference,fused,peers",
                   help="comma-separated: reference, fused, peers (all peers) or a peer: "
                        f"{', '.join(B.PEER_NAMES)} (default: %(default)s)")
    p.add_argument("--sizes", default="quick",
                   help=f"N values, e.g. 64,256,1024, or a preset: "
                        f"{', '.join(f'{k}={list(v)}' for k, v in B.SIZE_PRESETS.items())} (default: %(default)s)")
    p.add_argument("--backward", action="store_true", help="time forward + backward instead of forward only")
    p.add_argument("--repeat", type=int, default=5,
                   help="at least this many measurements per case (each one block of calls timed by "
                        "torch.utils.benchmark); the median is shown (default: %(default)s)")
    p.add_argument("--min-time", type=float, default=0.2, metavar="SECONDS",
                   help="at least this many seconds of timed calls per case (default: %(default)s)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default: %(default)s)")
    p.add_argument("--dim", type=int, default=32, help="query = key = value dim (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the run (the timer's num_threads; default: torch's own choice); 1 gives "
                        "the steadiest timings on a busy or small machine")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE and register it as an attnzoo plugin first (repeatable)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="where bench.png and bench.json go (default: %(default)s)")
    p.add_argument("--no-plot", action="store_true", help="do not write bench.png")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--compare", action="store_true",
                   help="also print torch.utils.benchmark.Compare's grid: per variant, backends x N")
    p.add_argument("--quality", action="store_true",
                   help="also run the quality tasks (regression MSE, associative-recall accuracy)")
    p.add_argument("--quality-steps", type=int, default=200,
                   help="training steps of the recall task (default: %(default)s)")
    p.set_defaults(func=run)
    return p


def format_table(results) -> str:
    """One row per variant x backend x N (grouped by variant, N), fastest first within a group."""
    ok = [r for r in results if r.status == "ok"]
    header = (f"{'variant':<18} {'backend':<10} {'dir':<7} {'N':>6} {'ms':>10} {'min ms':>10} {'x fastest':>9} "
              f"{'peak MiB':>9}")
    lines = [header, "-" * len(header)]
    prev = None
    for r in sorted(ok, key=lambda r: (r.variant, r.direction, r.n, r.median_ms)):
        if prev is not None and prev != r.group:
            lines.append("")
        prev = r.group
        mib = "-" if r.peak_mib is None else f"{r.peak_mib:9.2f}"
        lines.append(f"{r.variant:<18} {r.backend:<10} {r.direction:<7} {r.n:>6} {r.median_ms:10.3f} "
                     f"{r.min_ms:10.3f} {r.ratio:9.2f} {mib:>9}")
    others = [r for r in results if r.status != "ok"]
    if others:
        lines += ["", "not timed:"]
        seen = set()
        for r in others:
            key = (r.variant, r.backend, r.status, r.reason)
            if key in seen:
                continue
            seen.add(key)
            sizes = sorted({o.n for o in others if (o.variant, o.backend, o.status, o.reason) == key})
            lines.append(f"  {r.variant} / {r.backend} (N={','.join(map(str, sizes))}): {r.status}: {r.reason}")
    return "\n".join(lines)


def _machine_line(info: dict) -> str:
    gpu = info["gpu"]["name"] if info["gpu"] else "none"
    ext = "built" if info["extension"] else info["extension_status"]
    return (f"torch {info['torch']}, {info['threads']} threads, GPU: {gpu}, extension: {ext} "
            f"(compiled for: {', '.join(info['compiled_devices']) or 'none'})")


def run(args) -> int:
    """Run the comparison described by ``args`` (see :func:`add_parser`); returns an exit status.

    Raises :class:`attnzoo.tools.MissingExtraError` without the ``bench`` extra.
    """
    require_extra("attnzoo bench", "bench", ["tqdm"] + ([] if args.no_plot else ["matplotlib"]))
    import torch
    from torch.utils.benchmark import set_torch_threads
    from tqdm import tqdm

    import attnzoo

    err = sys.stderr
    try:
        B.register_plugins(args.plugin)
        if args.variants in (None, ""):
            variants = list(B.QUICK_VARIANTS)
        elif args.variants == "all":
            variants = attnzoo.list_variants()
        else:
            variants = B.check_variants(B.parse_list(args.variants))
        sizes = B.parse_sizes(args.sizes)
        backends = B.parse_list(args.backends)
        direction = "fwd+bwd" if args.backward else "fwd"
        todo = B.cases(variants, backends, sizes, [direction], batch=args.batch, dim=args.dim, device=args.device)
        if args.repeat < 1:
            raise ValueError(f"repeat: expected >= 1, got {args.repeat}")
        if not args.min_time >= 0:
            raise ValueError(f"min-time: expected seconds >= 0, got {args.min_time}")
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda requested but torch.cuda.is_available() is False")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"threads: expected >= 1, got {args.threads}")
    except (ValueError, ImportError, attnzoo.AttnzooError) as exc:
        print(f"attnzoo bench: error: {exc}", file=err)
        return 2

    threads = args.threads or torch.get_num_threads()
    results, quality = [], []
    with set_torch_threads(threads):  # the whole run (memory calls, quality tasks); restored afterwards
        guard = B.MemoryGuard(device=args.device)
        with tqdm(todo, desc="bench", unit="case", file=err, disable=None, leave=False) as bar:
            for case in bar:
                bar.set_postfix_str(case.id)
                results.append(B.run_case(case, repeat=args.repeat, guard=guard, min_run_time=args.min_time,
                                          num_threads=threads))
        B.add_ratios(results)

        if args.quality:
            from . import quality as Q

            with tqdm(total=len(variants) + 1, desc="quality", unit="variant", file=err, disable=None,
                      leave=False) as bar:
                quality += Q.regression()
                bar.update()
                quality += Q.recall(variants, steps=args.quality_steps, progress=bar.update)
        info = B.machine_info()

    config = {"variants": variants, "backends": backends, "sizes": sizes, "direction": direction,
              "repeat": args.repeat, "min_time": args.min_time, "batch": args.batch, "dim": args.dim,
              "device": args.device, "threads": threads, "timer": "torch.utils.benchmark.Timer.blocked_autorange"}
    payload = {"machine": info, "config": config, "results": [r.as_dict() for r in results],
               "quality": [q.as_dict() for q in quality]}

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(payload, f, indent=2, default=str)
    png = None
    if not args.no_plot:
        from .plot import plot_bench

        png = os.path.join(args.out, "bench.png")
        plot_bench(results, png)

    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(_machine_line(info))
        print(f"batch {args.batch}, dim {args.dim}, {args.device}, {direction}, {threads} threads, median of "
              f">= {args.repeat} measurements and >= {args.min_time:g} s per case (torch.utils.benchmark)\n")
        print(format_table(results))
        if args.compare:
            print()
            print(B.compare_table(results))
        if quality:
            from .quality import format_quality

            print()
            print(format_quality(quality))
    where = f"wrote {png} and " if png else "wrote "
    print(f"{where}{os.path.join(args.out, 'bench.json')}", file=err if args.json else sys.stdout)
    return 1 if any(r.status == "error" for r in results) else 0
