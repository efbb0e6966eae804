"""Tools built on the library; what needs more than torch sits behind an extra (``import attnzoo`` needs
torch and pluggy only, and imports none of these).

* ``tools.demo``: the seed experiment, Nadaraya–Watson regression (``attnzoo demo``); its PNGs need ``viz``;
* ``tools.bench``: the timing library (cases, peers, ``torch.utils.benchmark`` timings, peak memory,
  machine info) shared by ``attnzoo bench`` and ``benchmarks/``; torch only;
* ``tools.bench_cli``: the ``attnzoo bench`` command (progress bar, table, JSON, plot); extra ``bench``;
* ``tools.quality``: quality tasks (regression MSE, associative-recall accuracy); torch only;
* ``tools.plot``: figures (attention heatmaps, the demo's curves, bench curves, positional tables, hierarchical
  weights); extra ``viz``.

``attnzoo.cli`` (the ``attnzoo`` command) imports each tool when its subcommand runs. A tool used
without its extra raises :class:`MissingExtraError` (an ``ImportError``) naming the extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

#: extra -> what ``pip install 'attnzoo[extra]'`` brings (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "viz": ("matplotlib",),
    "bench": ("tqdm", "pytest_benchmark", "matplotlib"),
}

#: import name -> distribution name, where they differ
_DISTRIBUTIONS = {"pytest_benchmark": "pytest-benchmark"}


class MissingExtraError(ImportError):
    """A tool needs packages of an extra that are not installed; the message names the extra."""

    def __init__(self, tool: str, extra: str, missing: Iterable[str]):
        self.tool, self.extra = tool, extra
        self.missing = [_DISTRIBUTIONS.get(m, m) for m in missing]
        super().__init__(f"{tool} needs the {extra!r} extra: pip install 'attnzoo[{extra}]' "
                         f"(missing: {', '.join(self.missing)})")


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The ``modules`` (import names) that cannot be imported here."""
    out = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            out.append(name)
    return out


def require_extra(tool: str, extra: str, modules: Iterable[str] | None = None) -> None:
    """Raise :class:`MissingExtraError` unless every module ``tool`` needs from ``extra`` imports.

    ``modules``: import names (default: all of the extra's, from :data:`EXTRAS`).
    """
    missing = missing_modules(EXTRAS[extra] if modules is None else modules)
    if missing:
        raise MissingExtraError(tool, extra, missing)


__all__ = ["EXTRAS", "MissingExtraError", "missing_modules", "require_extra"]
