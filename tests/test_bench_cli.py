"""``attnzoo bench`` (tiny sizes), the plot helpers, the quality tasks and the shared benchmarking pieces."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import attnzoo
from attnzoo.tools import bench, bench_cli, plot, quality

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLUGIN_SOURCE = textwrap.dedent('''
    """A third-party plugin as a plugin author would write it: one variant, registered at run time."""
    import attnzoo
    from attnzoo.variants import PooledAttention


    class NegDistance(attnzoo.scoring.Score):
        """s = -|q - k|_1"""

        def forward(self, query, key):
            return -(query.unsqueeze(-2) - key.unsqueeze(-3)).abs().sum(-1)


    def factory(backend="auto"):
        return PooledAttention(NegDistance(), "soft", backend=backend)


    @attnzoo.hookimpl
    def attnzoo_register_variants(register):
        register("bench_test_l1", factory, capabilities={"soft"})
''')


def _parser():
    parser = argparse.ArgumentParser(prog="attnzoo")
    bench_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(argv):
    args = _parser().parse_args(["bench", *argv])
    assert args.func is bench_cli.run
    return args.func(args)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "bench_test_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "bench_test_plugin"
    if attnzoo.registry_instance().pm.get_plugin("bench_test_plugin") is not None:
        attnzoo.unregister(name="bench_test_plugin")
    sys.modules.pop("bench_test_plugin", None)


def test_bench_json_and_png(tmp_path, capsys):
    out = tmp_path / "out"
    rc = _run(["--variants", "scaled_dot,additive,average", "--sizes", "tiny", "--repeat", "2",
               "--out", str(out), "--json"])
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    assert (out / "bench.png").stat().st_size > 0
    assert json.loads((out / "bench.json").read_text())["results"] == payload["results"]
    assert payload["machine"]["torch"] == torch.__version__
    assert payload["config"]["timer"] == "torch.utils.benchmark.Timer.blocked_autorange"
    results = payload["results"]
    got = {(r["variant"], r["backend"], r["n"]) for r in results}
    for n in bench.SIZE_PRESETS["tiny"]:
        assert {("scaled_dot", "sdpa", n), ("additive", "d2l", n), ("average", "reference", n)} <= got
    for r in results:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["ratio"] >= 1.0 and r["group"] == f"{r['variant']} N={r['n']} fwd"
            assert r["peak_bytes"] is not None and r["peak_bytes"] >= 0
            # torch.utils.benchmark: >= --repeat measurements (blocks), each block >= 1 call
            assert len(r["times_ms"]) >= 2 and r["timed_calls"] >= len(r["times_ms"])
            assert r["min_ms"] <= r["median_ms"] and r["iqr_ms"] >= 0 and r["threads"] == torch.get_num_threads()
        else:
            assert r["backend"] == "fused" and r["reason"]
    for group in {r["group"] for r in results if r["status"] == "ok"}:
        assert min(r["ratio"] for r in results if r["group"] == group and r["status"] == "ok") == pytest.approx(1.0)


def test_bench_table_backward_and_quality(tmp_path, capsys):
    rc = _run(["--variants", "dot", "--backends", "reference,peers", "--sizes", "16", "--repeat", "1",
               "--backward", "--out", str(tmp_path), "--no-plot", "--quality", "--quality-steps", "5"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "x fastest" in text and "fwd+bwd" in text and "sdpa" in text
    assert "Nadaraya-Watson regression" in text and "Associative recall" in text
    assert not (tmp_path / "bench.png").exists()


def test_bench_threads_and_compare(tmp_path, capsys):
    """--threads is the timer's num_threads and is restored afterwards; --compare prints torch's grid."""
    before = torch.get_num_threads()
    rc = _run(["--variants", "scaled_dot,average", "--backends", "reference,sdpa", "--sizes", "16,32",
               "--repeat", "2", "--min-time", "0.01", "--threads", "1", "--out", str(tmp_path), "--no-plot",
               "--compare"])
    assert rc == 0 and torch.get_num_threads() == before
    text = capsys.readouterr().out
    assert "1 threads" in text and "x fastest" in text
    assert "[" in text and "scaled_dot fwd" in text and "N=16" in text and "N=32" in text and "sdpa" in text
    results = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert {r["threads"] for r in results} == {1}


def test_measure_blocks_threads_and_repeat():
    import time

    seen = []

    def slow():  # one call dwarfs min_run_time: a block is one call, and rounds are added up to `repeat`
        seen.append(torch.get_num_threads())
        time.sleep(0.02)

    before = torch.get_num_threads()
    m = bench.measure(slow, repeat=4, min_run_time=0.01, num_threads=1, label="l", sub_label="s", description="d")
    assert len(m.times) >= 4 and bench.timed_calls(m) >= 4 and set(seen) == {1}
    assert torch.get_num_threads() == before
    assert 0.015 < m.median < 0.2 and m.task_spec.label == "l" and m.num_threads == 1
    assert len(seen) > bench.timed_calls(m)  # the block-size search ran untimed calls first (the warm-up)
    fast = bench.measure(lambda: None, repeat=3, min_run_time=0.02)  # blocks of many calls
    assert bench.timed_calls(fast) > len(fast.times) >= 3 and fast.num_threads == before
    with pytest.raises(ValueError, match="repeat"):
        bench.measure(slow, repeat=0)


def test_bench_plugin_module(plugin_module, tmp_path, capsys):
    rc = _run(["--plugin", plugin_module, "--variants", "bench_test_l1,scaled_dot", "--backends", "reference",
               "--sizes", "16", "--repeat", "1", "--out", str(tmp_path), "--json", "--no-plot"])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert {r["variant"] for r in results if r["status"] == "ok"} == {"bench_test_l1", "scaled_dot"}


def test_bench_bad_arguments(tmp_path, capsys):
    assert _run(["--variants", "no_such_variant", "--out", str(tmp_path)]) == 2
    assert "no_such_variant" in capsys.readouterr().err
    assert _run(["--sizes", "big", "--out", str(tmp_path)]) == 2
    assert _run(["--backends", "numpy", "--out", str(tmp_path)]) == 2


def test_pytest_suite_benchmarks_a_runtime_plugin(plugin_module, tmp_path):
    """The plugin author's one command: ``pytest benchmarks/ --attnzoo-plugin mod --attnzoo-variants ...``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(ROOT, "benchmarks", "test_bench_variants.py"), "-q",
         "-p", "no:cacheprovider", "--attnzoo-plugin", plugin_module, "--attnzoo-variants", "bench_test_l1,dot",
         "--attnzoo-sizes", "16", "--attnzoo-backends", "reference,peers", "--attnzoo-directions", "fwd",
         "--benchmark-disable", "--attnzoo-no-memory"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout, proc.stdout


def test_show_heatmaps_axes(tmp_path):
    w = torch.softmax(torch.randn(2, 3, 4, 5), -1)
    fig = plot.show_heatmaps(w, "keys", "queries", titles=["a", "b", "c"], path=tmp_path / "h.png")
    assert len(fig.axes) == 2 * 3 + 1  # one colour bar for all panels
    assert (tmp_path / "h.png").stat().st_size > 0
    fig = plot.show_heatmaps([[[[0.5, 0.5], [1.0, 0.0]]]], "keys", "queries")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="titles"):
        plot.show_heatmaps(w, "keys", "queries", titles=["only one"])
    with pytest.raises(ValueError, match="rows, cols"):
        plot.show_heatmaps(w[0], "keys", "queries")


def test_plot_bench_axes(tmp_path):
    results = [bench.Result("v", b, n, "fwd", 1, 8, "cpu", median_ms=n * k, peak_bytes=n * n)
               for b, k in (("reference", 1.0), ("fused", 0.5)) for n in (16, 32, 64)]
    results.append(bench.Result("v", "fused", 128, "fwd", 1, 8, "cpu", status="skipped", reason="x"))
    fig = plot.plot_bench(results, tmp_path / "sub" / "b.png")
    assert len(fig.axes) == 2
    assert len([ln for ln in fig.axes[0].get_lines() if not ln.get_label().startswith("_")]) == 2
    assert (tmp_path / "sub" / "b.png").exists()
    assert len(plot.plot_bench([r.as_dict() for r in results]).axes) == 2


def test_regression_nw_beats_average():
    res = {r.label: r for r in quality.regression()}
    assert all(r.status == "ok" and math.isfinite(r.value) for r in res.values()), res
    assert res["nadaraya_watson"].value < res["average"].value
    assert res["nadaraya_watson learnable"].value < res["average"].value
    assert math.isfinite(res["nadaraya_watson learnable"].loss)


def test_recall_reports_loss_accuracy_time():
    res = quality.recall(["scaled_dot", "average"], steps=5, batch=16)
    assert [r.variant for r in res] == ["scaled_dot", "average"]
    for r in res:
        assert r.status == "ok" and math.isfinite(r.loss) and 0.0 <= r.accuracy <= 1.0 and r.ms_per_step > 0
    assert "Associative recall" in quality.format_quality(res)


def test_peak_memory_counts_allocations_during_the_call():
    def fn():
        a = torch.ones(1024, 1024)  # 4 MiB live ...
        b = a * 2  # ... 8 MiB live at the peak
        del a, b

    peak, method = bench.peak_memory(fn)
    if peak is None:
        pytest.skip(method)
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_peers_compute_the_same_function():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    for name in ("scaled_dot", "soft", "dot"):
        ours = attnzoo.create(name, backend="reference")
        peer = bench.PEERS["sdpa"][1](name, {})
        torch.testing.assert_close(peer(q, k, v), ours(q, k, v))
    opts = attnzoo.variant_info("additive").example_options(8, 8, 8)
    ours = attnzoo.create("additive", backend="reference", **opts)
    d2l = bench.D2LAdditiveAttention(**opts)
    d2l.load_state_dict({"W_q.weight": ours.score.W_q.weight, "W_k.weight": ours.score.W_k.weight,
                         "w_v.weight": ours.score.w_v.weight})
    torch.testing.assert_close(d2l(q, k, v), ours(q, k, v))
    peer = bench.TorchMHA(**attnzoo.variant_info("multihead").example_options(8, 8, 8)).eval()
    ours = attnzoo.from_torch(peer.mha, backend="reference")
    torch.testing.assert_close(peer(q, k, v), ours(q, k, v))
    assert bench.peers_for("multihead") == ["torch_mha"] and bench.peers_for("cosine") == []
