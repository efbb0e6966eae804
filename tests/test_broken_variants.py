"""Every conformance check fails on a variant broken in the way it looks for."""

import pytest

import attnzoo
from attnzoo.testing import CHECKS, Case, check_variant

from .broken_variants import BROKEN, BrokenPlugin


@pytest.fixture
def broken(fresh_registry):
    attnzoo.register(BrokenPlugin(), name="broken")
    return fresh_registry


def test_every_check_has_a_broken_variant():
    assert set(BROKEN) == set(CHECKS)


def test_the_unbroken_toy_passes(broken):
    assert check_variant("toy") == [c for c in CHECKS if c != "check_hard_ties"]


def test_off_by_one_lengths_are_caught(broken):
    with pytest.raises(AssertionError, match="off_by_one_lengths: check_"):
        check_variant("off_by_one_lengths")


@pytest.mark.parametrize("check", sorted(BROKEN))
def test_check_catches_its_defect(broken, check):
    case = Case(f"broken_{check.removeprefix('check_')}")
    with pytest.raises(AssertionError):
        CHECKS[check].fn(case)
    with pytest.raises(AssertionError, match=f"broken_{check.removeprefix('check_')}: check_"):
        check_variant(case.name)
