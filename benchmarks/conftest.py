"""Side-by-side speed and memory benchmarks of every registered attention variant (pytest-benchmark).

``benchmarks/test_bench_variants.py`` runs every registered variant (built-ins and any installed
third-party plugin) x backend x N x direction on random q, k, v ``(batch, N, dim)`` (Nq = Nk = N,
float32, no mask). Backends: ``reference``, ``fused`` (skipped, with the reason, when the
extension is not compiled for the device or its op is not implemented there) and *peers* that
compute the same function: torch ``scaled_dot_product_attention`` (``scaled_dot``, ``soft``,
``dot``), ``torch.nn.MultiheadAttention`` (``multihead``) and d2l's eager additive attention
(``additive``). Directions: ``fwd`` (under ``no_grad``) and ``fwd+bwd`` (gradients of q, k, v
and all parameters). Each table compares one variant at one size: ``benchmark.group`` is
``"{variant} N={n} {direction}"``.

Run::

    pytest benchmarks/                                  # default sizes N = 64, 256 (a couple of minutes)
    pytest benchmarks/ -m slow                          # only the long sizes N = 1024, 2048, 4096
    pytest benchmarks/ --attnzoo-long                   # default and long sizes
    pytest benchmarks/ --attnzoo-sizes 128,512 --attnzoo-backends reference,fused
    pytest benchmarks/ --attnzoo-device cuda --benchmark-json out.json

Benchmark your own variant against the built-ins, without editing this project: install your
package with an ``attnzoo`` entry point (it is picked up like the built-ins), or name the module
to register at run time, then pick the variants to compare::

    pytest benchmarks/ --attnzoo-variants myvariant,scaled_dot,additive
    pytest benchmarks/ --attnzoo-plugin mypkg.attention --attnzoo-variants myvariant,scaled_dot

(``--attnzoo-plugin`` imports the module and calls ``attnzoo.register(module)``; repeat it or
give a comma-separated list. The module must be importable: installed, or on ``PYTHONPATH``.
Your variant's ``example_options(query_dim, key_dim, value_dim)`` gives the options it is built
with.) The same is available as ``attnzoo bench --plugin mypkg.attention --variants myvariant,scaled_dot``.

Options (all under "attnzoo" in ``pytest --help``): ``--attnzoo-variants``, ``--attnzoo-plugin``,
``--attnzoo-backends`` (``reference``, ``fused``, ``peers`` or a peer: ``sdpa``, ``torch_mha``,
``d2l``), ``--attnzoo-sizes``, ``--attnzoo-long``, ``--attnzoo-directions`` (``fwd``,
``fwd+bwd``), ``--attnzoo-device``, ``--attnzoo-batch`` (2), ``--attnzoo-dim`` (64),
``--attnzoo-budget`` (seconds of timed calls per case, 0.2), ``--attnzoo-threads``,
``--attnzoo-no-memory``.

What is measured: after one warm-up call and one probe call, ``benchmark.pedantic`` times
``rounds = clamp(budget / probe time, --benchmark-min-rounds, 1000)`` calls, one iteration
each; CUDA calls end with ``torch.cuda.synchronize()`` so the clock stops after the work.
``extra_info`` holds ``peak_bytes``/``peak_mib``: the peak tensor memory allocated during one
extra, untimed call above the level at its start (CPU: allocations and frees of the c10 CPU
allocator from ``torch.profiler(profile_memory=True)``, summed in time order; CUDA:
``torch.cuda.max_memory_allocated``), ``memory_method``, and ``backend_note`` (what
``explain`` says runs). A case whose peak memory, extrapolated quadratically from a smaller N,
would exceed half the device memory is skipped. The machine info of ``--benchmark-json`` /
``--benchmark-autosave`` gains torch version, thread count, GPU and the extension's build.
On a small shared machine ``--attnzoo-threads 1`` gives the steadiest timings.

The timing library is :mod:`attnzoo.tools.bench`; this suite needs the ``bench`` extra (pytest-benchmark).
"""

from __future__ import annotations

import pytest
import torch

from attnzoo.tools import bench as B
from attnzoo.tools import require_extra

require_extra("pytest benchmarks/", "bench", ["pytest_benchmark"])  # its `benchmark` fixture


def pytest_addoption(parser):
    g = parser.getgroup("attnzoo", "attnzoo benchmarks (benchmarks/test_bench_variants.py)")
    g.addoption("--attnzoo-variants", default=None, metavar="NAMES",
                help="comma-separated variants to compare (default: every registered variant)")
    g.addoption("--attnzoo-plugin", action="append", default=[], metavar="MODULE",
                help="import MODULE and attnzoo.register it first (repeatable, or comma-separated)")
    g.addoption("--attnzoo-backends", default="reference,fused,peers", metavar="NAMES",
                help="reference, fused, peers, or a peer: sdpa, torch_mha, d2l (default: %(default)s)")
    g.addoption("--attnzoo-sizes", default=None, metavar="NS",
                help="N values or a preset name (default: 64,256, plus the slow-marked 1024,2048,4096)")
    g.addoption("--attnzoo-long", action="store_true", help="also run the long sizes (as -m slow does alone)")
    g.addoption("--attnzoo-directions", default="fwd,fwd+bwd", metavar="DIRS",
                help="fwd and/or fwd+bwd (default: %(default)s)")
    g.addoption("--attnzoo-device", default="cpu", help="cpu or cuda (default: %(default)s)")
    g.addoption("--attnzoo-batch", type=int, default=2, help="batch size (default: %(default)s)")
    g.addoption("--attnzoo-dim", type=int, default=64, help="query = key = value dim (default: %(default)s)")
    g.addoption("--attnzoo-budget", type=float, default=0.2, metavar="SECONDS",
                help="time spent on timed calls per case, at least --benchmark-min-rounds calls (default: 0.2)")
    g.addoption("--attnzoo-threads", type=int, default=None, help="torch.set_num_threads for the run")
    g.addoption("--attnzoo-no-memory", action="store_true", help="do not measure peak memory")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (selected with -m slow)")
    modules = [m for opt in config.getoption("attnzoo_plugin") for m in B.parse_list(opt)]
    if modules:
        B.register_plugins(modules)
    threads = config.getoption("attnzoo_threads")
    if threads:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Without ``-m`` or ``--attnzoo-long``, leave out the slow-marked (long) sizes of this suite."""
    if config.getoption("attnzoo_long") or config.getoption("markexpr"):
        return
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (drop if "attnzoo_case" in params and item.get_closest_marker("slow") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info):
    info = B.machine_info()
    machine_info["torch_version"] = info["torch"]
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["gpu"] = info["gpu"]
    machine_info["attnzoo_extension"] = info["extension"]
    machine_info["attnzoo"] = info


@pytest.fixture(scope="session")
def attnzoo_guard(request):
    """Skips cases whose extrapolated peak memory is over half the device memory."""
    return B.MemoryGuard(device=request.config.getoption("attnzoo_device"))
