"""Every conformance check fails on a variant broken in the way it looks for."""

import pytest

import attnzoo
from attnzoo.testing import CHECKS, Case, check_variant, parametrize_with_checks

from .broken_variants import BROKEN, REFERENCES, BrokenPlugin, toy_reference


@pytest.fixture
def broken(fresh_registry):
    attnzoo.register(BrokenPlugin(), name="broken")
    return fresh_registry


def test_every_check_has_a_broken_variant():
    assert set(BROKEN) == set(CHECKS)


def test_the_unbroken_toy_passes(broken):
    not_toy = ("check_hard_ties", "check_sampling")  # the toy is neither hard nor sampled
    assert check_variant("toy") == [c for c in CHECKS if c not in (*not_toy, "check_reference_formula")]
    assert check_variant("toy", reference=toy_reference) == [c for c in CHECKS if c not in not_toy]


def test_off_by_one_lengths_are_caught(broken):
    with pytest.raises(AssertionError, match="off_by_one_lengths: check_"):
        check_variant("off_by_one_lengths")


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_check_catches_its_defect(broken, check):
    case = Case(f"broken_{check.removeprefix('check_')}", reference=REFERENCES.get(check))
    with pytest.raises(AssertionError):
        CHECKS[check].fn(case)
    with pytest.raises(AssertionError, match=f"broken_{check.removeprefix('check_')}: check_"):
        check_variant(case.name, reference=case.reference)


class _DeclaredPlugin:
    """``unsaved_declared`` declares the check it fails; ``toy_overdeclared`` declares one it passes."""

    @attnzoo.hookimpl
    def attnzoo_register_variants(self, register):
        from .broken_variants import Toy, UnsavedState

        caps = {"soft", "bfloat16"}
        register("unsaved_declared", UnsavedState, capabilities=caps,
                 expected_failures={"check_state_dict_roundtrip": "on purpose"})
        register("toy_overdeclared", Toy, capabilities=caps, expected_failures={"check_state_dict_roundtrip": "no"})


@pytest.fixture
def declared(fresh_registry):
    attnzoo.register(_DeclaredPlugin(), name="declared")
    return fresh_registry


def test_declared_expected_failure_is_required_to_fail(declared):
    assert "check_state_dict_roundtrip" in check_variant("unsaved_declared")
    with pytest.raises(AssertionError, match="check_state_dict_roundtrip passed but is declared an expected failure"):
        check_variant("toy_overdeclared")


def test_declared_expected_failure_becomes_a_strict_xfail(declared):
    marks = {}
    for param in parametrize_with_checks(["unsaved_declared", "toy_overdeclared"]).args[1]:
        marks[param.id] = [(m.name, m.kwargs) for m in param.marks]
    assert marks["unsaved_declared-check_state_dict_roundtrip"] == [("xfail", {"strict": True, "reason": "on purpose"})]
    assert marks["toy_overdeclared-check_state_dict_roundtrip"][0][0] == "xfail"
    assert all(not m for i, m in marks.items() if not i.endswith("check_state_dict_roundtrip"))


def test_strict_xfail_runs_as_such_in_pytest(declared, pytester):
    pytester.makepyfile(test_declared="""
        from attnzoo.testing import parametrize_with_checks

        @parametrize_with_checks(["unsaved_declared", "toy_overdeclared"])
        def test_suite(case, check):
            check(case)
    """)
    result = pytester.runpytest_inprocess("-k", "check_state_dict_roundtrip", "-p", "no:cacheprovider")
    result.assert_outcomes(xfailed=1, failed=1)  # toy_overdeclared passes: XPASS(strict) is a failure
    result.stdout.fnmatch_lines(["*toy_overdeclared-check_state_dict_roundtrip*"])
