"""The timing library of the speed comparisons (``attnzoo bench`` and ``benchmarks/``); needs torch only.

One *case* is variant x backend x N x direction on random inputs q, k, v of shape
``(batch, N, dim)`` (self-attention sizes: ``Nq = Nk = N``, float32, no mask), with the
module in eval mode and options from ``variant_info(name).example_options(dim, dim, dim)``.

* ``fwd``: one call under ``torch.no_grad()``.
* ``fwd+bwd``: one call with grad, then ``torch.autograd.grad`` of the output (against a fixed
  random cotangent) with respect to q, k, v and every parameter (no ``.grad`` accumulation).
* On CUDA every call ends with ``torch.cuda.synchronize()``, so the clock stops after the work.

Timing (:func:`measure`, used by :func:`run_case` and so by ``attnzoo bench``) is
``torch.utils.benchmark.Timer.blocked_autorange``: its block-size search runs the call untimed
first (the warm-up), each measurement is one block of calls (a single call when one call is long
enough to dwarf the timer's overhead), and blocks are timed until ``min_run_time`` seconds and at
least ``repeat`` measurements are reached; the threads are the Timer's ``num_threads``. (The
pytest-benchmark suite in ``benchmarks/`` times with pytest-benchmark instead.)

Backends: ``reference`` and ``fused`` (attnzoo's own; a variant that takes no ``backend``
option runs its only implementation as ``reference``), and *peers*, other implementations of
the same function: ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``) for
``scaled_dot``/``soft``/``dot``, ``torch_mha`` (``torch.nn.MultiheadAttention``) for
``multihead``, ``d2l`` (d2l's eager ``AdditiveAttention``) for ``additive``. The fused backend
is reported *unavailable* (never timed on the fallback) when the extension is not compiled
for the device, or when its op is not implemented there yet.

Peak memory (:func:`peak_memory`) is measured on one extra, untimed call (``torch.utils.benchmark``
times only: its Timer and Measurement hold no memory counters): the highest amount
of tensor memory allocated *during* the call above what was allocated before it (inputs,
parameters and the cotangent are not counted; intermediates, saved activations, outputs and
gradients are). CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at entry.
CPU: every allocation and free of the c10 CPU allocator, from ``torch.profiler`` with
``profile_memory=True``, summed in time order (kernel workspaces included, ``malloc`` outside
the allocator not).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.nn import functional as F

import attnzoo
from attnzoo import ops
from attnzoo.registry import accepted_options

#: sizes N (= Nq = Nk); ``default`` is what ``pytest benchmarks/`` runs, ``long`` what ``-m slow`` adds
SIZE_PRESETS: dict[str, tuple[int, ...]] = {
    "tiny": (16, 32),
    "default": (64, 256),
    "quick": (64, 256, 1024),
    "long": (1024, 2048, 4096),
}
#: variants of ``attnzoo bench`` without ``--variants``
QUICK_VARIANTS = ("scaled_dot", "additive", "multihead", "nadaraya_watson", "average")
ATTNZOO_BACKENDS = ("reference", "fused")
PEER_NAMES = ("sdpa", "torch_mha", "d2l")
DIRECTIONS = ("fwd", "fwd+bwd")

MiB = 2**20


class Unavailable(Exception):
    """This case cannot run here (the reason is the message); reported as skipped, never timed."""


# -- peers ------------------------------------------------------------------------------------------------


class D2LAdditiveAttention(nn.Module):
    """d2l's eager ``AdditiveAttention`` (11.3), without dropout: ``softmax(w_v^T tanh(W_q q + W_k k)) v``."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int):
        super().__init__()
        self.W_k = nn.Linear(key_dim, hidden_dim, bias=False)
        self.W_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, queries, keys, values):
        queries, keys = self.W_q(queries), self.W_k(keys)
        features = torch.tanh(queries.unsqueeze(2) + keys.unsqueeze(1))
        scores = self.w_v(features).squeeze(-1)
        self.attention_weights = F.softmax(scores, dim=-1)
        return torch.bmm(self.attention_weights, values)


class SDPA(nn.Module):
    """``torch.nn.functional.scaled_dot_product_attention`` with a fixed ``scale`` (None: ``1/sqrt(d)``)."""

    def __init__(self, scale: float | None = None):
        super().__init__()
        self.scale = scale

    def forward(self, q, k, v):
        # 4-D (batch, heads, N, d) input: torch's fused CPU kernel needs it (3-D takes the slow math path)
        return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=self.scale)[:, 0]


class TorchMHA(nn.Module):
    """``torch.nn.MultiheadAttention`` (batch first, ``need_weights=False``) called like an attnzoo variant."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 bias: bool = True, **_):
        super().__init__()
        self.mha = nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)

    def forward(self, q, k, v):
        return self.mha(q, k, v, need_weights=False)[0]


def _builtin(variant: str) -> bool:
    try:
        return attnzoo.variant_info(variant).plugin in ("scores", "poolings", "multihead")
    except attnzoo.UnknownNameError:
        return False


#: peer name -> (variants it computes, builder(variant, options) -> module called as module(q, k, v))
PEERS: dict[str, tuple[tuple[str, ...], Callable[[str, dict], nn.Module]]] = {
    "sdpa": (("scaled_dot", "soft", "dot"), lambda name, opts: SDPA(1.0 if name == "dot" else None)),
    "torch_mha": (("multihead",), lambda name, opts: TorchMHA(**opts)),
    "d2l": (("additive",), lambda name, opts: D2LAdditiveAttention(**opts)),
}


PEER_DESCRIPTIONS = {
    "sdpa": "peer: torch.nn.functional.scaled_dot_product_attention",
    "torch_mha": "peer: torch.nn.MultiheadAttention",
    "d2l": "peer: d2l AdditiveAttention (eager)",
}


def peers_for(variant: str) -> list[str]:
    """Peer backends computing the same function as built-in ``variant`` with its example options."""
    if not _builtin(variant):
        return []
    return [p for p, (variants, _) in PEERS.items() if variant in variants]


def backends_for(variant: str, wanted: Iterable[str] = ("reference", "fused", "peers")) -> list[str]:
    """``wanted`` (``reference``, ``fused``, peer names, or ``peers`` for all of them) that apply to ``variant``."""
    out: list[str] = []
    for b in wanted:
        if b == "peers":
            out += [p for p in peers_for(variant) if p not in out]
        elif b in ATTNZOO_BACKENDS or b in peers_for(variant):
            if b not in out:
                out.append(b)
        elif b not in PEER_NAMES:
            raise ValueError(f"backend: got {b!r}, expected reference, fused, peers or one of {PEER_NAMES}")
    return out


# -- cases --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark: ``variant`` on ``backend`` at ``N = n``; forward only unless ``backward``."""

    variant: str
    backend: str
    n: int
    backward: bool = False
    batch: int = 2
    dim: int = 64
    device: str = "cpu"

    @property
    def direction(self) -> str:
        return "fwd+bwd" if self.backward else "fwd"

    @property
    def group(self) -> str:
        """Cases compared side by side: same variant, size and direction."""
        return f"{self.variant} N={self.n} {self.direction}"

    @property
    def id(self) -> str:
        return f"{self.variant}-{self.backend}-N{self.n}-{self.direction}"


def cases(variants: Sequence[str], backends: Sequence[str], sizes: Sequence[int], directions: Sequence[str] = ("fwd",),
          **shape) -> list[Case]:
    """Every variant x applicable backend x size x direction."""
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"direction: got {d!r}, expected one of {DIRECTIONS}")
    return [Case(v, b, n, d == "fwd+bwd", **shape)
            for v in variants for b in backends_for(v, backends) for n in sizes for d in directions]


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _fused_unavailable(device: torch.device) -> str | None:
    if not ops.EXTENSION:
        return f"fused: extension not compiled ({ops.EXTENSION_STATUS}); it would run the eager fallback ops"
    if device.type not in ops.compiled_devices():
        return f"fused: extension has no {device.type} kernels (compiled: {', '.join(ops.compiled_devices())})"
    return None


def build_module(case: Case) -> nn.Module:
    """The module a case times (raises :class:`Unavailable` when it cannot be built here)."""
    info = attnzoo.variant_info(case.variant)
    opts = dict(info.example_options(case.dim, case.dim, case.dim))
    if case.backend in PEERS:
        if case.backend not in peers_for(case.variant):
            raise Unavailable(f"{case.backend}: not a peer of {case.variant!r}")
        return PEERS[case.backend][1](case.variant, opts)
    if case.backend == "fused":
        why = _fused_unavailable(torch.device(case.device))
        if why:
            raise Unavailable(why)
    names, var_kw = accepted_options(info.factory)
    takes_backend = "backend" in names or var_kw
    if case.backend == "fused" and not takes_backend:
        raise Unavailable(f"fused: variant {case.variant!r} has only its own implementation")
    try:
        return attnzoo.create(case.variant, **({"backend": case.backend} if takes_backend else {}), **opts)
    except ValueError as exc:
        if case.backend == "fused":
            raise Unavailable(str(exc)) from None
        raise


def build(case: Case, seed: int = 0) -> tuple[Callable[[], None], str]:
    """``(fn, note)``: ``fn()`` runs the case once (synchronised); ``note`` says what runs (``explain``).

    Runs ``fn`` once to check it works: a fused op that is not implemented for the device, or
    a score with no fused form, raises :class:`Unavailable`.
    """
    device = torch.device(case.device)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = build_module(case).to(device).eval()
    q, k, v = (torch.randn(case.batch, case.n, case.dim, generator=gen).to(device) for _ in range(3))
    note = PEER_DESCRIPTIONS.get(case.backend, case.backend)
    if hasattr(module, "explain"):
        with contextlib.suppress(Exception):
            note = module.explain(q, k, v)
    sync = _sync(device)
    if case.backward:
        for t in (q, k, v):
            t.requires_grad_(True)
        leaves = [q, k, v, *(p for p in module.parameters() if p.requires_grad)]
        with torch.no_grad():
            out_shape = module(q, k, v).shape
        cot = torch.randn(out_shape, generator=gen).to(device)

        def fn():
            out = module(q, k, v)
            torch.autograd.grad(out, leaves, cot, allow_unused=True)
            sync()
    else:

        def fn():
            with torch.no_grad():
                module(q, k, v)
            sync()

    try:
        fn()
    except NotImplementedError as exc:
        if case.backend == "fused":
            raise Unavailable(f"fused: op not implemented for {device.type} yet ({str(exc).splitlines()[0]})") from None
        raise
    except ValueError as exc:
        if case.backend == "fused" and "not available" in str(exc):
            raise Unavailable(str(exc)) from None
        raise
    return fn, note


# -- measuring ------------------------------------------------------------------------------------------------


def measure(fn: Callable[[], None], repeat: int = 5, min_run_time: float = 0.2, num_threads: int | None = None,
            label: str | None = None, sub_label: str | None = None, description: str | None = None):
    """Time ``fn()`` with ``torch.utils.benchmark.Timer``; returns a ``torch.utils.benchmark.Measurement``.

    ``blocked_autorange(min_run_time)`` picks a block size (the timer's overhead below 0.01 % of a
    block, or one call when a call takes longer than ``min_run_time``; its search runs ``fn`` at
    least once untimed: the warm-up) and times blocks until ``min_run_time`` seconds are spent.
    When a call is so long that this gives fewer than ``repeat`` measurements, more rounds sized
    to the missing ones are merged in (``Measurement.merge``; each round's search is one more
    untimed call). ``measurement.times`` are seconds per call, one per block.
    ``num_threads``: torch threads during the timing (the Timer sets and restores them; default:
    the current ``torch.get_num_threads()``, where the Timer's own default would be 1).
    ``label``, ``sub_label``, ``description``: what ``torch.utils.benchmark.Compare`` groups by
    (tables, rows, columns).
    """
    from torch.utils.benchmark import Measurement, Timer

    if repeat < 1 or min_run_time < 0:
        raise ValueError(f"measure: expected repeat >= 1 and min_run_time >= 0, got {repeat}, {min_run_time}")
    timer = Timer(stmt="fn()", globals={"fn": fn}, label=label, sub_label=sub_label, description=description,
                  num_threads=torch.get_num_threads() if num_threads is None else num_threads)
    rounds = [timer.blocked_autorange(min_run_time=min_run_time)]
    while (done := sum(len(m.raw_times) for m in rounds)) < repeat:
        block = rounds[-1].median * rounds[-1].number_per_run  # seconds per block: each round adds >= 1 block
        rounds.append(timer.blocked_autorange(min_run_time=0.9 * (repeat - done) * block))
    if len(rounds) == 1:
        return rounds[0]
    (merged,) = Measurement.merge(rounds)
    merged.metadata = {"timed_calls": sum(len(m.raw_times) * m.number_per_run for m in rounds)}
    return merged


def timed_calls(measurement) -> int:
    """How many calls a :func:`measure` result timed (blocks x calls per block)."""
    meta = measurement.metadata or {}
    return meta.get("timed_calls", len(measurement.raw_times) * measurement.number_per_run)


@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines) for the duration."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak(fn: Callable[[], None]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == torch.device("cpu").type:
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
    events.sort()
    live = peak = 0
    for _, size in events:  # frees of blocks allocated before the call are not reported (size 0)
        live += size
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], None], device: str | torch.device = "cpu") -> tuple[int | None, str]:
    """``(bytes, method)``: peak tensor memory allocated during one call of ``fn`` above the level at entry.

    None when it cannot be measured (the method then says why).
    """
    # Not torch.utils.benchmark: it measures time only (Timer and Measurement hold no memory counters),
    # so the peak comes from the CUDA caching allocator's statistics or the profiler's CPU allocator events.
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - base, "cuda.max_memory_allocated"
    if device.type != "cpu":
        return None, f"not measured on {device.type}"
    try:
        return _cpu_peak(fn), "torch.profiler CPU allocator events"
    except Exception as exc:  # noqa: BLE001 - private profiler API: report instead of failing the benchmark
        return None, f"not measured ({type(exc).__name__}: {exc})"


@dataclass
class Result:
    """One case's outcome; times in milliseconds, ``status`` ``ok``, ``skipped`` or ``error``.

    ``times_ms``: per-call time of each measurement (a block of calls, see :func:`measure`);
    ``median_ms``, ``min_ms``, ``iqr_ms`` over them; ``timed_calls``: calls timed in all;
    ``threads``: torch threads during the timing. ``measurement`` (not in :meth:`as_dict`) is the
    ``torch.utils.benchmark.Measurement``, for ``torch.utils.benchmark.Compare``.
    """

    variant: str
    backend: str
    n: int
    direction: str
    batch: int
    dim: int
    device: str
    status: str = "ok"
    reason: str = ""
    note: str = ""
    times_ms: list | None = None
    median_ms: float | None = None
    min_ms: float | None = None
    iqr_ms: float | None = None
    timed_calls: int | None = None
    threads: int | None = None
    peak_bytes: int | None = None
    memory_method: str = ""
    ratio: float | None = None  # median over the fastest median of the same group
    measurement: object = field(default=None, repr=False, compare=False)

    @property
    def group(self) -> str:
        return f"{self.variant} N={self.n} {self.direction}"

    @property
    def peak_mib(self) -> float | None:
        return None if self.peak_bytes is None else self.peak_bytes / MiB

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "measurement"}
        if out["times_ms"] is not None:
            out["times_ms"] = list(out["times_ms"])
        return {**out, "group": self.group, "peak_mib": self.peak_mib}


def run_case(case: Case, repeat: int = 5, warmup: int = 1, memory: bool = True,
             guard: MemoryGuard | None = None, min_run_time: float = 0.2, num_threads: int | None = None) -> Result:
    """Build, warm up, time (:func:`measure`: at least ``repeat`` measurements and ``min_run_time``
    seconds; median and min reported) and measure peak memory on one more call.

    ``warmup``: untimed calls before the timer's own warm-up, the check call of :func:`build`
    included. ``num_threads``: torch threads while timing (default: the current number).
    ``guard``: skip the case when its projected peak memory is too big, and record what it used.
    """
    res = Result(case.variant, case.backend, case.n, case.direction, case.batch, case.dim, case.device)
    why = guard.check(case) if guard is not None else None
    if why:
        res.status, res.reason = "skipped", why
        return res
    try:
        fn, res.note = build(case)  # includes one call
        for _ in range(warmup - 1):
            fn()
        m = measure(fn, repeat=repeat, min_run_time=min_run_time, num_threads=num_threads,
                    label=f"{case.variant} {case.direction}", sub_label=case.backend, description=f"N={case.n}")
        if memory:
            res.peak_bytes, res.memory_method = peak_memory(fn, case.device)
            if guard is not None:
                guard.record(case, res.peak_bytes)
    except Unavailable as exc:
        res.status, res.reason = "skipped", str(exc)
        return res
    except Exception as exc:  # noqa: BLE001 - one broken variant must not stop a comparison
        res.status, res.reason = "error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return res
    res.measurement = m
    res.times_ms = [t * 1e3 for t in m.times]
    res.median_ms, res.iqr_ms, res.min_ms = m.median * 1e3, m.iqr * 1e3, min(res.times_ms)
    res.timed_calls, res.threads = timed_calls(m), m.num_threads
    return res


def compare_table(results: Sequence[Result]) -> str:
    """``torch.utils.benchmark.Compare`` of the timed results: a table per variant and direction, a row
    per backend, a column per N (median time per call, significant figures trimmed); "" if none."""
    from torch.utils.benchmark import Compare

    measurements = [r.measurement for r in results if r.measurement is not None]
    if not measurements:
        return ""
    table = Compare(measurements)
    table.trim_significant_figures()
    return str(table).strip("\n")


def add_ratios(results: Sequence[Result]) -> None:
    """Set each ok result's ``ratio``: its median over the fastest median in its group."""
    best: dict[str, float] = {}
    for r in results:
        if r.median_ms is not None:
            best[r.group] = min(best.get(r.group, math.inf), r.median_ms)
    for r in results:
        if r.median_ms is not None:
            r.ratio = r.median_ms / best[r.group]


class MemoryGuard:
    """Skips cases whose peak memory, extrapolated from a smaller N of the same variant x backend, is too big.

    Extrapolation assumes quadratic growth in N (the worst of the built-ins); ``limit_bytes``
    defaults to half the device's memory (CPU: physical RAM).
    """

    def __init__(self, limit_bytes: int | None = None, device: str = "cpu"):
        self.limit = limit_bytes if limit_bytes is not None else _half_memory(torch.device(device))
        self.seen: dict[tuple, tuple[int, int]] = {}

    @staticmethod
    def _key(case: Case) -> tuple:
        return (case.variant, case.backend, case.backward, case.batch, case.dim, case.device)

    def record(self, case: Case, peak_bytes: int | None) -> None:
        if peak_bytes:
            old = self.seen.get(self._key(case))
            if old is None or case.n >= old[0]:
                self.seen[self._key(case)] = (case.n, peak_bytes)

    def check(self, case: Case) -> str | None:
        """A reason to skip ``case``, or None."""
        seen = self.seen.get(self._key(case))
        if self.limit is None or seen is None or seen[0] >= case.n:
            return None
        projected = seen[1] * (case.n / seen[0]) ** 2
        if projected > self.limit:
            return (f"projected peak {projected / 2**30:.1f} GiB (from {seen[1] / MiB:.0f} MiB at N={seen[0]}, "
                    f"quadratic) is over the limit of {self.limit / 2**30:.1f} GiB")
        return None


def _half_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    """Torch version, threads, GPU and extension build: what a timing depends on besides the code."""
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(), "count": torch.cuda.device_count(),
               "capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    return {
        "attnzoo": attnzoo.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpu": gpu,
        "extension": ops.EXTENSION,
        "extension_status": ops.EXTENSION_STATUS,
        "extension_build": ops.build_info(),
        "compiled_devices": list(ops.compiled_devices()),
    }


def parse_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def parse_sizes(text: str | Sequence[int] | None, default: str = "default") -> list[int]:
    """A preset name (``tiny``, ``default``, ``quick``, ``long``) or comma-separated ints."""
    if text is None:
        return list(SIZE_PRESETS[default])
    if not isinstance(text, str):
        return [int(n) for n in text]
    if text in SIZE_PRESETS:
        return list(SIZE_PRESETS[text])
    try:
        sizes = [int(s) for s in parse_list(text)]
    except ValueError:
        raise ValueError(f"sizes: expected a preset ({', '.join(SIZE_PRESETS)}) or ints like 64,256, "
                         f"got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"sizes: expected positive ints, got {text!r}")
    return sizes


def register_plugins(modules: Iterable[str]) -> list[str]:
    """Import each module path and register it with :func:`attnzoo.register` (once); returns the names."""
    import importlib

    names = []
    for mod_name in modules:
        module = importlib.import_module(mod_name)
        if attnzoo.registry_instance().pm.is_registered(module):
            names.append(mod_name)
            continue
        names.append(attnzoo.register(module, name=mod_name))
    return names


def check_variants(names: Iterable[str]) -> list[str]:
    """``names`` with each checked against the registry (raises ``UnknownNameError``)."""
    names = list(names)
    for n in names:
        attnzoo.variant_info(n)
    return names
