"""Shared fixtures: torch's RNG seeded per test, a fresh registry, a fake installed plugin.

The report header names the attnzoo under test (its path: the checkout or an installed copy) and
its extension. ``ATTNZOO_EXPECT_EXTENSION=1`` (set by ``make test`` and CI) turns a missing
extension into an error instead of skipped kernel tests.
"""

from __future__ import annotations

import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

import attnzoo
from attnzoo import ops
from attnzoo._env import flag

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def _under_test() -> str:
    where = Path(attnzoo.__file__).parent
    info = ops.build_info() if ops.EXTENSION else {}
    ext = f"built for {', '.join(ops.compiled_devices())}" if ops.EXTENSION else ops.EXTENSION_STATUS
    isa = f", cpu isa {info['cpu_isa_runtime']}" if "cpu_isa_runtime" in info else ""
    return f"attnzoo {attnzoo.__version__} from {where}; extension: {ext}{isa}"


def pytest_report_header(config):
    return _under_test()


def pytest_configure(config):
    if flag("ATTNZOO_EXPECT_EXTENSION") and not ops.EXTENSION:
        raise pytest.UsageError(f"ATTNZOO_EXPECT_EXTENSION is set, but the kernel tests would be skipped: "
                                f"{_under_test()}")


def pytest_collection_modifyitems(config, items):
    """Without ``-m``, leave out the slow-marked tests under tests/ (long sizes; ``-m slow`` runs them)."""
    if config.option.markexpr:
        return
    keep, drop = [], []
    for item in items:
        under_tests = Path(str(item.fspath)).resolve().is_relative_to(ROOT / "tests")
        (drop if under_tests and item.get_closest_marker("slow") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _seeded_rng(request):
    """Torch's global RNG seeded from the test's id: a test draws the same inputs alone, in any order, in CI."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def fresh_registry(monkeypatch):
    """Replace the process-wide registry with a new one for the test."""
    reg = attnzoo.Registry()
    monkeypatch.setattr(attnzoo, "_REGISTRY", reg)
    return reg


def make_dist(tmp_path: Path, name: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> Path:
    """Write an installed-looking distribution (dist-info + modules) under ``tmp_path``; returns the path."""
    site = tmp_path / "site"
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    eps = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[attnzoo]\n{eps}")
    for mod, src in (modules or {}).items():
        (site / f"{mod}.py").write_text(textwrap.dedent(src))
    return site


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_registry):
    """``installed(name, entry_points, modules, extra_path=())`` puts a distribution on sys.path."""

    def install(name, entry_points, modules=None, extra_path=()):
        site = make_dist(tmp_path / name, name, entry_points, modules)
        for p in (site, *extra_path):
            monkeypatch.syspath_prepend(str(p))
        return site

    yield install
    for mod in [m for m in sys.modules if m.startswith(("attnzoo_laplace", "tp_"))]:
        del sys.modules[mod]
