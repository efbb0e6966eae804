"""The registry: a pluggy ``PluginManager`` over the entry-point group ``attnzoo``.

Built-in variants (the ``attnzoo_plugins`` package, from ``plugins/``) are found
through the same entry points as third-party ones. Each entry point is loaded
on its own: one that fails to import or to register is recorded in
:attr:`Registry.failures` with a :class:`~attnzoo.errors.PluginLoadWarning`, and
the others carry on.

Environment:

* ``ATTNZOO_STRICT_PLUGINS=1``: a failing plugin raises instead.
* ``ATTNZOO_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party entry point (built-ins still load).
* ``ATTNZOO_BLOCK_PLUGINS=a,b``: skip the entry points (or distributions) named ``a`` and ``b``.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata

import pluggy
from torch import nn

from . import hookspecs
from ._env import flag
from .errors import DuplicateNameError, PluginLoadWarning, UnknownNameError

GROUP = "attnzoo"
BUILTIN_DIST = "attnzoo"


@dataclass(frozen=True)
class ScoreInfo:
    name: str
    cls: type
    plugin: str
    description: str = ""


@dataclass(frozen=True)
class VariantInfo:
    """What the registry knows of one variant."""

    name: str
    factory: Callable
    plugin: str
    description: str = ""
    capabilities: frozenset = frozenset()
    example_options: Callable[[int, int, int], dict] = field(default=lambda q, k, v: {}, repr=False)
    expected_failures: Mapping[str, str] = field(default_factory=dict)

    @property
    def takes_backend(self) -> bool:
        """Whether the factory accepts ``backend=`` (by name, or through ``**kwargs``)."""
        names, var_kw = accepted_options(self.factory)
        return "backend" in names or var_kw


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    stage: str  # "import" or "register"
    error: str


def _describe(cls) -> str:
    doc = inspect.cleandoc(getattr(cls, "__doc__", None) or "")  # its own docstring, not a base class's
    return doc.splitlines()[0] if doc else ""


class Registry:
    """Variants and scores contributed by plugins; built on first use, rebuilt after (un)register."""

    def __init__(self, autoload: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._autoload = autoload
        self._loaded = False
        self._dist_of: dict[str, str] = {}
        self._cache: tuple[dict, dict] | None = None

    # -- plugins -------------------------------------------------------------------------------
    def _fail(self, plugin: str, stage: str, exc: BaseException) -> None:
        if flag("ATTNZOO_STRICT_PLUGINS"):
            raise exc
        self.failures.append(PluginFailure(plugin, stage, f"{type(exc).__name__}: {exc}"))
        warnings.warn(f"attnzoo plugin {plugin!r} failed to {stage}: {type(exc).__name__}: {exc}",
                      PluginLoadWarning, stacklevel=3)

    def load_entry_points(self) -> None:
        """Import every ``attnzoo`` entry point once, each on its own (none with ``autoload=False``)."""
        if self._loaded:
            return
        blocked = {b.strip() for b in os.environ.get("ATTNZOO_BLOCK_PLUGINS", "").split(",") if b.strip()}
        no_autoload = flag("ATTNZOO_DISABLE_PLUGIN_AUTOLOAD")
        eps = metadata.entry_points(group=GROUP) if self._autoload else ()
        builtins_first = sorted(eps, key=lambda ep: (ep.dist is None or ep.dist.name != BUILTIN_DIST))
        for ep in builtins_first:
            dist = ep.dist.name if ep.dist is not None else ""
            if ep.name in blocked or dist in blocked or (no_autoload and dist != BUILTIN_DIST):
                continue
            if ep.name in self._dist_of:
                if self._dist_of[ep.name] != dist:  # the same name from two distributions: keep the first
                    self._fail(ep.name, "import", DuplicateNameError(
                        f"entry point {ep.name!r} is provided by {self._dist_of[ep.name]!r} and {dist!r}"))
                continue
            try:
                self._add(ep.load(), ep.name)
            except Exception as exc:  # noqa: BLE001 - any plugin error must not take the registry down
                self._fail(ep.name, "import", exc)  # re-raises in strict mode
            self._dist_of[ep.name] = dist
        self._loaded = True  # not before: in strict mode a failure re-raises on the next call too
        self._cache = None

    def _add(self, plugin, name: str | None) -> str:
        """Register ``plugin``; its hooks must match the specs (a misspelt hook is an error)."""
        name = self.pm.register(plugin, name=name)
        if name is None:
            raise ValueError(f"plugin: {plugin!r} is blocked")
        try:
            self.pm.check_pending()
        except Exception:
            self.pm.unregister(name=name)
            raise
        return name

    def register(self, plugin, name: str | None = None) -> str:
        """Register a plugin object or module at run time; returns its name. Errors (a name that is
        already taken among them) raise here, and leave the registry as it was."""
        self.load_entry_points()
        name = self._add(plugin, name)
        self._cache = None
        try:
            self._build()
        except DuplicateNameError:
            self.pm.unregister(name=name)
            self._cache = None
            raise
        return name

    def unregister(self, plugin=None, name: str | None = None) -> None:
        self.pm.unregister(plugin, name=name)
        self._cache = None

    # -- contents ------------------------------------------------------------------------------
    def _build(self) -> tuple[dict, dict]:
        self.load_entry_points()
        if self._cache is not None:
            return self._cache
        self.failures = [f for f in self.failures if f.stage == "import"]
        scores: dict[str, ScoreInfo] = {}
        variants: dict[str, VariantInfo] = {}

        def installed(plugin: str) -> bool:  # a third-party entry point (not a built-in, not run-time)
            return self._dist_of.get(plugin, BUILTIN_DIST) != BUILTIN_DIST

        def clash(plugin: str, error: DuplicateNameError) -> None:
            """An installed plugin's duplicate is skipped (recorded, with a warning); a run-time one raises."""
            if not installed(plugin):
                raise error
            self._fail(plugin, "register", error)  # re-raises in strict mode

        def collect(hook, table, make):
            for impl in hook.get_hookimpls():  # in registration order: built-ins, entry points, run time
                found = self._call_register_hook(impl, make)
                for name, info in (found or {}).items():
                    if name in table:
                        clash(info.plugin, DuplicateNameError(
                            f"{name!r} is registered by two plugins: {table[name].plugin!r} and {info.plugin!r}; "
                            f"{info.plugin!r}'s is skipped; unregister or block one (ATTNZOO_BLOCK_PLUGINS)"))
                        continue
                    table[name] = info

        collect(self.pm.hook.attnzoo_register_scores, scores, _score_info)
        collect(self.pm.hook.attnzoo_register_variants, variants, _variant_info)
        for name, s in list(scores.items()):  # every score is also a soft-pooling variant of its name
            if name not in variants:
                variants[name] = _score_variant(s)
            elif variants[name].plugin != s.plugin:
                loser = variants[name].plugin if installed(variants[name].plugin) else s.plugin
                clash(loser, DuplicateNameError(
                    f"{name!r} is a score of plugin {s.plugin!r} and a variant of plugin {variants[name].plugin!r}; "
                    f"every score is also a variant of its name; {loser!r}'s is skipped"))
                if loser == s.plugin:
                    del scores[name]
                else:
                    variants[name] = _score_variant(s)
        self._cache = (scores, variants)
        return self._cache

    def _call_register_hook(self, impl, make) -> dict | None:
        """Run one plugin's registration hook; None (and a recorded failure) when it raises."""
        found: dict = {}

        def register(name, obj, **kw):
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"name: expected an identifier, got {name!r}")
            if name in found:
                raise DuplicateNameError(f"{name!r} registered twice by plugin {impl.plugin_name!r}")
            found[name] = make(name, obj, impl.plugin_name, **kw)

        try:
            impl.function(register=register)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not take the registry down
            self._fail(impl.plugin_name, "register", exc)
            return None
        return found

    @property
    def scores(self) -> dict[str, ScoreInfo]:
        return self._build()[0]

    @property
    def variants(self) -> dict[str, VariantInfo]:
        return self._build()[1]

    def variant(self, name: str) -> VariantInfo:
        variants = self.variants
        if name not in variants:
            raise UnknownNameError(f"variant: unknown name {name!r}; registered: {', '.join(sorted(variants))}")
        return variants[name]

    def score(self, name: str) -> ScoreInfo:
        scores = self.scores
        if name not in scores:
            raise UnknownNameError(f"score: unknown name {name!r}; registered: {', '.join(sorted(scores))}")
        return scores[name]


def _score_info(name, cls, plugin, *, description=""):
    if not callable(cls):
        raise TypeError(f"score {name!r}: expected a class or factory, got {cls!r}")
    return ScoreInfo(name, cls, plugin, description or _describe(cls))


def _variant_info(name, factory, plugin, *, description="", capabilities=(), example_options=None,
                  expected_failures=None):
    if not callable(factory):
        raise TypeError(f"variant {name!r}: expected a factory, got {factory!r}")
    return VariantInfo(name, factory, plugin, description or _describe(factory), frozenset(capabilities),
                       example_options or (lambda q, k, v: {}), dict(expected_failures or {}))


def _score_variant(s: ScoreInfo) -> VariantInfo:
    from .variants import PooledAttention

    def factory(backend: str = "auto", causal: bool = False, align: str = "top_left", **options):
        return PooledAttention(build_score(s, options, caller=factory), "soft", causal=causal, backend=backend,
                               align=align)

    example = getattr(s.cls, "example_options", None)
    return VariantInfo(
        s.name, factory, s.plugin, s.description or f"soft attention with the {s.name} score",
        frozenset({"soft"}) | frozenset(getattr(s.cls, "capabilities", ())),
        (lambda q, k, v: example(q, k)) if callable(example) else (lambda q, k, v: {}),
        dict(getattr(s.cls, "expected_failures", {})),
    )


def accepted_options(fn) -> tuple[list[str], bool]:
    """Keyword names ``fn`` accepts, and whether it takes ``**kwargs``."""
    if isinstance(fn, type) and fn.__init__ in (object.__init__, nn.Module.__init__):
        return [], False  # no __init__ of its own: takes no options
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_options(what: str, fn, options: Mapping) -> None:
    """Raise :class:`UnknownNameError` listing what ``fn`` accepts when ``options`` has other names."""
    names, var_kw = accepted_options(fn)
    unknown = sorted(set(options) - set(names))
    if unknown and not var_kw:
        raise UnknownNameError(f"{what}: unknown option(s) {', '.join(unknown)}; "
                               f"accepted: {', '.join(names) or '(none)'}")


def build_score(info: ScoreInfo, options: Mapping, caller: Callable | None = None):
    """``info.cls(**options)``; an unknown option's error also lists ``caller``'s own options."""
    try:
        check_options(f"score {info.name!r}", info.cls, options)
    except UnknownNameError as exc:
        own = ", ".join(accepted_options(caller)[0]) if caller is not None else ""
        raise UnknownNameError(f"{exc}" + (f"; besides the score's options: {own}" if own else "")) from None
    return info.cls(**options)
