"""The ``attnzoo`` command: ``list``, ``demo`` and ``bench``.

``list`` needs only the library; ``demo`` needs the ``viz`` extra and ``bench`` the ``bench`` extra
(``pip install 'attnzoo[viz]'``, ``'attnzoo[bench]'``).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

import attnzoo

# The tools (attnzoo.tools.*) are imported by the subcommand that runs them, so that `attnzoo list`
# and `attnzoo --help` work without the extras; tools.bench_cli imports nothing beyond torch at load.
from .tools import MissingExtraError, bench_cli, require_extra


def _list(args) -> int:
    from . import ops

    names = attnzoo.list_variants()
    infos = [attnzoo.variant_info(n) for n in names]
    rows = [(i.name, i.plugin, ",".join(sorted(i.capabilities)), i.description.replace("``", "")) for i in infos]
    head = ("variant", "plugin", "capabilities", "description")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(3)]
    for r in [head, tuple("-" * w for w in widths) + ("-" * 11,), *rows]:
        print("  ".join(f"{r[c]:<{widths[c]}}" for c in range(3)) + "  " + r[3])
    print(f"\nscores (compose with soft, hard, local and multihead): {', '.join(attnzoo.list_scores())}")
    print(f"fused ops: {ops.EXTENSION_STATUS}" + (f", devices: {', '.join(ops.compiled_devices())}"
                                                   if ops.EXTENSION else ""))
    failures = attnzoo.plugin_failures()
    for f in failures:
        print(f"plugin {f.plugin!r} failed to {f.stage}: {f.error}", file=sys.stderr)
    return 1 if failures and args.strict else 0


def _demo(args) -> int:
    require_extra("attnzoo demo", "viz")  # before the fit, not after it
    from .tools import demo

    results = demo.run(seed=args.seed, out_dir=args.out, backend=args.backend)
    print(demo.format_table(results))
    for path in results["files"]:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnzoo", description=textwrap.dedent(__doc__ or ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"attnzoo {attnzoo.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the table of registered variants and plugins")
    p.add_argument("--strict", action="store_true", help="exit 1 if a plugin failed to load")
    p.set_defaults(func=_list)
    p = sub.add_parser("demo", help="Nadaraya-Watson regression: average vs kernel vs learned kernel (extra: viz)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the data and the initial w (default 0)")
    p.add_argument("--out", default="attnzoo-out", help="folder for the PNGs (default attnzoo-out)")
    p.add_argument("--backend", default="auto", choices=("auto", "fused", "reference"))
    p.set_defaults(func=_demo)
    bench_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``attnzoo ARGS``; returns the exit status (1 with a one-line error when a tool's extra is missing)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MissingExtraError as exc:
        print(f"attnzoo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
