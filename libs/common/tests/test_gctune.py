"""The garbage collector's tuning: what the variables say is what the process gets, a bad value
is refused by name, and a cycle is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from blametrail_common.gctune import parse_thresholds, tune_gc
from blametrail_common.settings import GcSettings


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50000,20,10", (50000, 20, 10)), (" 700, 10 ,10 ", (700, 10, 10)), ("", None), ("  ", None)],
)
def test_thresholds_parse(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_thresholds(text) == expected


@pytest.mark.parametrize("text", ["50000", "1,2", "1,2,3,4", "a,b,c", "-1,10,10", "0,10,10"])
def test_a_bad_threshold_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="BLAMETRAIL_GC_THRESHOLDS"):
        parse_thresholds(text)


def test_the_environment_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLAMETRAIL_GC_THRESHOLDS", "12345,7,3")
    monkeypatch.setenv("BLAMETRAIL_GC_FREEZE", "false")
    assert tune_gc() == (12345, 7, 3) == gc.get_threshold()
    assert gc.get_freeze_count() == 0


def test_defaults_raise_the_young_threshold_and_freeze_what_start_up_made() -> None:
    assert tune_gc(GcSettings()) == (50000, 20, 10)
    assert gc.get_freeze_count() > 1000  # this test process's modules, at least


def test_empty_thresholds_keep_pythons_own() -> None:
    gc.set_threshold(700, 10, 10)
    assert tune_gc(GcSettings(gc_thresholds="", gc_freeze=False)) == (700, 10, 10)


def test_a_cycle_made_after_tuning_is_still_collected() -> None:
    tune_gc(GcSettings())

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # only the collector frees a cycle
    gc.collect()
    assert gone() is None
