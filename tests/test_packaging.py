"""What the release archives hold, checked fast (no compiler): the sdist carries every file of ``csrc/``
(the headers included), the wheel every package. ``scripts/check_dist.sh`` (``make dist-check``) goes
further: it compiles from the sdist, installs, and tests the installed copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the source tree a release is built from (what a clean clone has; build outputs left out)
TREE = ("attnzoo", "plugins", "csrc", "docs", "examples", "tests", "benchmarks", "scripts",
        "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "Makefile")
IGNORE = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "*.egg-info", "build", "*.pyc")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """``(source copy, sdist path, wheel path)``: the sdist from a copy of the tree, the pure-Python
    wheel (``ATTNZOO_NO_EXTENSION=1``) from the unpacked sdist, as ``python -m build`` does."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    src.mkdir()
    for name in TREE:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORE)
        elif path.exists():
            shutil.copy2(path, src / name)
    env = {**os.environ, "ATTNZOO_NO_EXTENSION": "1"}
    hook = "import sys; from setuptools import build_meta as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-c", hook, "build_sdist", str(out)], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sdist = out / proc.stdout.split()[-1]
    with tarfile.open(sdist) as t:
        t.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    proc = subprocess.run([sys.executable, "-c", hook, "build_wheel", str(out)], cwd=unpacked, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return src, sdist, out / proc.stdout.split()[-1]


def _files(top: Path, base: Path) -> set[str]:
    return {str(p.relative_to(base)) for p in top.rglob("*") if p.is_file()}


def test_sdist_holds_every_source_and_header(archives):
    src, sdist, _ = archives
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    csrc = _files(src / "csrc", src)
    assert {f for f in csrc if f.endswith((".h", ".cuh"))} >= {"csrc/common/validate.h", "csrc/common/params.h"}
    for top in ("csrc", "plugins", "examples", "docs", "tests", "benchmarks", "scripts", "attnzoo"):
        missing = _files(src / top, src) - names
        assert not missing, f"{top}/ files missing from the sdist: {sorted(missing)}"
    assert {"MANIFEST.in", "README.md", "pyproject.toml", "setup.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


def test_wheel_holds_every_package(archives):
    src, _, wheel = archives
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    python = {f for f in _files(src / "attnzoo", src) if f.endswith(".py")}
    plugins = {f"attnzoo_plugins/{p.name}" for p in (src / "plugins").glob("*.py")}
    assert {"attnzoo/tools/__init__.py", "attnzoo/tools/bench.py"} <= python
    assert not (python | plugins) - names, sorted((python | plugins) - names)
    assert "attnzoo = attnzoo.cli:main" in entry_points and "scores = attnzoo_plugins.scores" in entry_points
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert sorted(r for r in requires if "extra ==" not in r) == ["pluggy>=1.3", "torch<2.15,>=2.4"]
