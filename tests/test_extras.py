"""The library apart from its tools: without the extras' packages, ``import attnzoo`` and every variant
work, and each tool fails with an error naming the extra to install.

Each test runs a fresh interpreter whose ``sitecustomize`` makes matplotlib, tqdm and pytest_benchmark
unimportable (as if never installed) before anything else is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

BLOCKED = ("matplotlib", "tqdm", "pytest_benchmark")

# None in sys.modules: `import tqdm` raises ModuleNotFoundError and importlib.util.find_spec("tqdm") is None,
# as when it is not installed (torch itself probes some of these with find_spec)
SITECUSTOMIZE = textwrap.dedent(f'''
    import sys

    for name in {BLOCKED!r}:
        sys.modules[name] = None
''')


@pytest.fixture
def bare(tmp_path):
    """``bare(*args)`` runs ``python *args`` (cwd: a scratch folder) without the extras' packages."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}

    def run(*args, timeout=240):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=timeout)

    return run


def test_library_works_without_the_extras(bare):
    code = textwrap.dedent(f'''
        import importlib.util, sys
        assert importlib.util.find_spec("matplotlib") is None  # the blocker works
        try:
            import tqdm  # noqa: F401
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("tqdm imported")
        import torch
        import attnzoo
        from attnzoo import cli, ops  # the CLI module and its parser load too
        from attnzoo.tools import bench, demo, quality  # the tools that need torch only

        q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 3)
        for name, opts in (("additive", dict(query_dim=8, key_dim=8, hidden_dim=16)), ("scaled_dot", {{}}),
                           ("multihead", dict(embed_dim=8, num_heads=2))):
            attn = attnzoo.create(name, **opts)
            vv = v if name != "multihead" else torch.randn(2, 7, 8)
            out = attn(q, k, vv, valid_lens=torch.tensor([3, 7]))
            assert out.shape[:2] == (2, 5) and torch.isfinite(out).all(), name
        assert "scaled_dot" in attnzoo.list_variants() and not attnzoo.plugin_failures()
        cli.build_parser().parse_args(["bench", "--sizes", "16"])
        results = demo.run(seed=0, plots=False)
        assert results["nadaraya_watson"]["mse"] < results["average"]["mse"]
        loaded = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in {BLOCKED!r} and mod is not None)
        assert not loaded, loaded
        print("ok", ops.EXTENSION)
    ''')
    proc = bare("-c", code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok")


def test_list_works_without_the_extras(bare):
    proc = bare("-m", "attnzoo", "list")
    assert proc.returncode == 0, proc.stderr
    assert "additive" in proc.stdout and "fused ops:" in proc.stdout


@pytest.mark.parametrize(("command", "extra", "missing"), [
    (["demo"], "viz", "matplotlib"),
    (["bench", "--sizes", "16"], "bench", "tqdm, matplotlib"),
    (["bench", "--sizes", "16", "--no-plot"], "bench", "tqdm"),
])
def test_tools_name_their_extra(bare, tmp_path, command, extra, missing):
    proc = bare("-m", "attnzoo", *command, "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"attnzoo: error: attnzoo {command[0]} needs the {extra!r} extra: pip install 'attnzoo[{extra}]' "
            f"(missing: {missing})") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # it failed before doing any work


def test_plot_module_names_its_extra(bare):
    proc = bare("-c", "import attnzoo.tools.plot")
    assert proc.returncode != 0
    assert ("MissingExtraError: attnzoo.tools.plot needs the 'viz' extra: pip install 'attnzoo[viz]' "
            "(missing: matplotlib)") in proc.stderr


def test_require_extra_in_process():
    from attnzoo.tools import EXTRAS, MissingExtraError, missing_modules, require_extra

    require_extra("x", "viz")  # installed here (the dev extra)
    assert missing_modules(["attnzoo_no_such_module", "torch"]) == ["attnzoo_no_such_module"]
    with pytest.raises(MissingExtraError, match=r"^t needs the 'bench' extra: pip install 'attnzoo\[bench\]' "
                                                r"\(missing: attnzoo_no_such_module\)$") as info:
        require_extra("t", "bench", ["attnzoo_no_such_module"])
    assert isinstance(info.value, ImportError) and info.value.extra == "bench"
    assert str(MissingExtraError("t", "bench", ["pytest_benchmark"])).endswith("(missing: pytest-benchmark)")
    assert set(EXTRAS) == {"viz", "bench"}


def test_pyproject_dependencies_and_extras():
    """Keep the packaging in step with EXTRAS: the base install is torch and pluggy only."""
    tomllib = pytest.importorskip("tomllib")
    from attnzoo.tools import EXTRAS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]

    def names(reqs):
        return {r.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in reqs}

    assert names(project["dependencies"]) == {"torch", "pluggy"}
    assert "torch>=2.4,<2.15" in project["dependencies"]
    extras = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert names(extras[extra]) == {m.replace("_", "-") for m in modules}, extra
    assert "attnzoo[bench,viz]" in extras["dev"]
    assert {"pytest", "hypothesis", "ruff", "pybind11", "ninja", "numpy"} <= names(extras["dev"])
