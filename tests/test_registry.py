"""Plugin discovery, run-time registration, failures and name clashes."""

import pytest
import torch

import attnzoo
from attnzoo import DuplicateNameError, PluginLoadWarning, UnknownNameError
from attnzoo.testing import check_variant

from .conftest import ROOT

BUILTIN_VARIANTS = {"soft", "hard", "local", "average", "dot", "scaled_dot", "general", "cosine", "concat",
                    "additive", "nadaraya_watson", "multihead"}


def test_builtins_come_from_entry_points(fresh_registry):
    assert BUILTIN_VARIANTS <= set(attnzoo.list_variants())
    assert attnzoo.variant_info("additive").plugin == "scores"
    assert attnzoo.variant_info("multihead").plugin == "multihead"
    assert attnzoo.list_variants() == sorted(attnzoo.list_variants())
    assert attnzoo.plugin_failures() == []


def test_variant_info_describes(fresh_registry):
    info = attnzoo.variant_info("hard")
    assert "arg-max" in info.description and "hard" in info.capabilities


def test_unknown_variant_lists_names(fresh_registry):
    with pytest.raises(UnknownNameError, match=r"unknown name 'nope'.*additive.*soft"):
        attnzoo.create("nope")


def test_unknown_option_lists_accepted(fresh_registry):
    accepted = "accepted: query_dim, key_dim, hidden_dim"
    with pytest.raises(UnknownNameError, match=rf"unknown option\(s\) hiden_dim; {accepted}"):
        attnzoo.create("additive", query_dim=4, key_dim=4, hiden_dim=8)
    with pytest.raises(UnknownNameError, match="'scaled_dot'.*temperature.*besides the score's options: score, causal"):
        attnzoo.create("hard", temperature=2.0)
    with pytest.raises(UnknownNameError, match=r"score: unknown name 'cosin'"):
        attnzoo.create("soft", score="cosin")


def test_bad_backend_is_named(fresh_registry):
    with pytest.raises(ValueError, match="backend: got 'gpu'"):
        attnzoo.create("soft", backend="gpu")


class LaplaceLike(torch.nn.Module):
    """Negative L1 distance."""

    def forward(self, q, k):
        return -(q.unsqueeze(-2) - k.unsqueeze(-3)).abs().sum(-1)


class ScorePlugin:
    @attnzoo.hookimpl
    def attnzoo_register_scores(self, register):
        register("l1", LaplaceLike)


def test_runtime_score_composes_with_every_pooling_and_heads(fresh_registry):
    name = attnzoo.register(ScorePlugin())
    assert "l1" in attnzoo.list_variants() and "l1" in attnzoo.list_scores()
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    for variant, opts in (("soft", {}), ("hard", {}), ("local", {"window": 1}), ("l1", {})):
        attn = attnzoo.create(variant, score="l1", **opts) if variant != "l1" else attnzoo.create("l1")
        assert attn(q, k, v).shape == (2, 3, 6)
        assert "reference" in attn.explain(q, k, v)  # no fused form: stays on the reference path
    mh = attnzoo.create("multihead", embed_dim=4, num_heads=2, score="l1")
    assert mh(q, k, k).shape == (2, 3, 4)
    check_variant("l1")
    check_variant("hard", score="l1")
    attnzoo.unregister(name=name)
    assert "l1" not in attnzoo.list_variants()


def test_fused_backend_refuses_unfusable_score(fresh_registry):
    attnzoo.register(ScorePlugin())
    attn = attnzoo.create("soft", score="l1", backend="fused")
    with pytest.raises(ValueError, match="backend: 'fused' is not available: score LaplaceLike"):
        attn(torch.randn(1, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 3))


def test_two_plugins_one_name_names_both(fresh_registry):
    class Clash:
        @attnzoo.hookimpl
        def attnzoo_register_scores(self, register):
            register("cosine", LaplaceLike)

    with pytest.raises(DuplicateNameError, match="'cosine' is registered by two plugins: 'scores' and 'clash'"):
        attnzoo.register(Clash(), name="clash")  # at run time: raises at once, the registry is as it was
    assert attnzoo.variant_info("cosine").plugin == "scores"


def test_plugin_failing_to_register_is_recorded(fresh_registry):
    class Broken:
        @attnzoo.hookimpl
        def attnzoo_register_variants(self, register):
            raise RuntimeError("boom")

    with pytest.warns(PluginLoadWarning, match="'broken' failed to register: RuntimeError: boom"):
        attnzoo.register(Broken(), name="broken")  # the registry is rebuilt at once: the warning comes here
    names = attnzoo.list_variants()
    assert BUILTIN_VARIANTS <= set(names)
    assert [(f.plugin, f.stage) for f in attnzoo.plugin_failures()] == [("broken", "register")]


def test_entry_point_failing_to_import_is_recorded(installed):
    installed("tp-bad", {"tp_bad": "tp_bad_missing_module"})
    with pytest.warns(PluginLoadWarning, match="'tp_bad' failed to import: ModuleNotFoundError"):
        names = attnzoo.list_variants()
    assert BUILTIN_VARIANTS <= set(names)
    assert attnzoo.plugin_failures()[0].plugin == "tp_bad"


def test_strict_mode_raises(installed, monkeypatch):
    monkeypatch.setenv("ATTNZOO_STRICT_PLUGINS", "1")
    installed("tp-bad", {"tp_bad": "tp_bad_missing_module"})
    with pytest.raises(ModuleNotFoundError):
        attnzoo.list_variants()


GOOD = {"tp_good": """
import attnzoo, torch

class Neg(torch.nn.Module):
    def forward(self, q, k):
        return -q @ k.transpose(-1, -2)

@attnzoo.hookimpl
def attnzoo_register_scores(register):
    register("neg_dot", Neg)
"""}


def test_autoload_can_be_disabled(installed, monkeypatch):
    monkeypatch.setenv("ATTNZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    installed("tp-good", {"tp_good": "tp_good"}, GOOD)
    names = attnzoo.list_variants()
    assert "neg_dot" not in names and BUILTIN_VARIANTS <= set(names)


def test_a_plugin_can_be_blocked(installed, monkeypatch):
    installed("tp-good", {"tp_good": "tp_good"}, GOOD)
    monkeypatch.setenv("ATTNZOO_BLOCK_PLUGINS", "tp_good")
    assert "neg_dot" not in attnzoo.list_variants()


def test_third_party_entry_point_is_discovered(installed):
    installed("tp-good", {"tp_good": "tp_good"}, GOOD)
    assert "neg_dot" in attnzoo.list_variants()
    assert attnzoo.variant_info("neg_dot").plugin == "tp_good"


def test_example_package_is_discovered_and_conforms(installed):
    example = ROOT / "examples" / "attnzoo-laplace"
    installed("attnzoo-laplace", {"laplace": "attnzoo_laplace"}, extra_path=[example])
    assert "laplace" in attnzoo.list_variants()
    assert attnzoo.variant_info("laplace").plugin == "laplace"
    laplace = lambda q, k, b: -(q.unsqueeze(-2) - k.unsqueeze(-3)).abs().sum(-1) / b  # the plugin's formula
    assert "check_reference_formula" in check_variant(
        "laplace", reference=lambda attn, q, k: laplace(q, k, attn.score.bandwidth))
    check_variant("hard", score="laplace", reference=lambda attn, q, k: laplace(q, k, attn.score.bandwidth))
    check_variant("multihead", score="laplace")


def test_misspelt_hook_is_a_recorded_failure(installed):
    installed("tp-typo", {"tp_typo": "tp_typo"}, {"tp_typo": """
import attnzoo

@attnzoo.hookimpl
def attnzoo_register_variants(reg):   # wrong argument name
    pass
"""})
    with pytest.warns(PluginLoadWarning, match="'tp_typo' failed to import"):
        names = attnzoo.list_variants()
    assert BUILTIN_VARIANTS <= set(names)
    assert attnzoo.list_variants() == names  # and it stays loaded


def test_entry_point_name_taken_by_another_distribution(installed):
    installed("tp-dup", {"scores": "tp_good"}, GOOD)
    with pytest.warns(PluginLoadWarning, match="entry point 'scores' is provided by"):
        names = attnzoo.list_variants()
    assert BUILTIN_VARIANTS <= set(names)


def test_strict_mode_raises_again_on_retry(installed, monkeypatch):
    monkeypatch.setenv("ATTNZOO_STRICT_PLUGINS", "1")
    installed("tp-bad", {"tp_bad": "tp_bad_missing_module"})
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError):
            attnzoo.list_variants()


def test_score_and_variant_names_may_not_shadow(fresh_registry):
    class Shadow:
        @attnzoo.hookimpl
        def attnzoo_register_variants(self, register):
            register("dot", lambda: attnzoo.create("soft"))

    with pytest.raises(DuplicateNameError, match="'dot' is a score of plugin 'scores' and a variant of plugin 'shado"):
        attnzoo.register(Shadow(), name="shadow")
    assert attnzoo.create("dot") is not None  # the registry is as it was


def test_registry_without_autoload_is_empty():
    assert attnzoo.Registry(autoload=False).variants == {}
