"""The command line: `attnzoo list` and the seed experiment `attnzoo demo`."""

import subprocess
import sys

import pytest

from attnzoo import demo
from attnzoo.cli import main


def test_list_prints_every_variant(capsys, fresh_registry):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("additive", "nadaraya_watson", "multihead", "local"):
        assert f"\n{name} " in out
    assert "fused ops:" in out


def test_list_reports_broken_plugins(capsys, installed):
    installed("tp-bad", {"tp_bad": "tp_bad_missing_module"})
    with pytest.warns(Warning):
        assert main(["list", "--strict"]) == 1
    assert "plugin 'tp_bad' failed to import: ModuleNotFoundError" in capsys.readouterr().err


def test_demo_reproduces_d2l(tmp_path, capsys):
    assert main(["demo", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nadaraya_watson(learnable)" in out and "test MSE" in out
    for name in ("demo_fit.png", "demo_weights.png"):
        assert (tmp_path / name).stat().st_size > 1000
    a, b = demo.run(seed=3, plots=False), demo.run(seed=3, plots=False)
    assert a["nadaraya_watson"]["mse"] == b["nadaraya_watson"]["mse"]
    # kernel regression beats the average; training lowers the leave-one-out loss
    assert a["nadaraya_watson"]["mse"] < a["average"]["mse"]
    losses = a["nadaraya_watson(learnable)"]["train_losses"]
    assert losses[-1] < losses[0]


def test_demo_backends_agree():
    ref = demo.run(seed=1, plots=False, backend="reference")
    fused = demo.run(seed=1, plots=False, backend="fused")
    for name in ("average", "nadaraya_watson"):
        assert abs(ref[name]["mse"] - fused[name]["mse"]) < 1e-6
    # five float32 SGD steps with lr 0.5 on a summed loss amplify rounding differences a little
    a, b = ref["nadaraya_watson(learnable)"], fused["nadaraya_watson(learnable)"]
    assert abs(a["w"] - b["w"]) < 1e-2 * a["w"] and abs(a["mse"] - b["mse"]) < 1e-2 * a["mse"]


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "attnzoo", "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("attnzoo ")
