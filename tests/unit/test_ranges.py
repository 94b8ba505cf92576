"""Ranges: a merged set of half-open byte ranges, checked against a set-of-offsets model."""

from __future__ import annotations

import random

import pytest
from wtfs_index.ranges import Ranges


def test_an_empty_set_holds_nothing() -> None:
    r = Ranges()
    assert list(r) == []
    assert len(r) == 0
    assert r.total == 0
    assert not r.present(0, 1)
    assert r.find_missing(0, 10) == [(0, 10)]
    assert r.overlap(0, 10) == 0


def test_an_empty_span_is_always_present() -> None:
    assert Ranges().present(5, 5)
    assert Ranges().find_missing(5, 5) == []


def test_overlapping_and_touching_inserts_merge() -> None:
    r = Ranges()
    r.insert(10, 20)
    r.insert(30, 40)
    assert list(r) == [(10, 20), (30, 40)]
    r.insert(20, 25)  # touches the first
    assert list(r) == [(10, 25), (30, 40)]
    r.insert(24, 31)  # bridges both
    assert list(r) == [(10, 40)]
    r.insert(0, 5)
    r.insert(50, 60)
    r.insert(3, 55)  # swallows everything
    assert list(r) == [(0, 60)]
    assert r.total == 60


def test_inserting_an_empty_or_reversed_range_changes_nothing() -> None:
    r = Ranges([(0, 10)])
    r.insert(20, 20)
    r.insert(30, 25)
    assert list(r) == [(0, 10)]


def test_inserts_out_of_order_end_up_sorted() -> None:
    r = Ranges([(50, 60), (0, 10), (30, 40), (12, 14)])
    assert list(r) == [(0, 10), (12, 14), (30, 40), (50, 60)]


def test_remove_splits_trims_and_deletes() -> None:
    r = Ranges([(0, 100)])
    r.remove(40, 60)
    assert list(r) == [(0, 40), (60, 100)]
    r.remove(30, 70)
    assert list(r) == [(0, 30), (70, 100)]
    r.remove(0, 30)
    assert list(r) == [(70, 100)]
    r.remove(90, 200)
    assert list(r) == [(70, 90)]
    r.remove(10, 10)
    assert list(r) == [(70, 90)]
    r.remove(0, 1000)
    assert list(r) == []


def test_present_needs_every_byte() -> None:
    r = Ranges([(10, 20), (20, 30), (40, 50)])
    assert r.present(10, 30)
    assert r.present(15, 16)
    assert r.present(40, 50)
    assert not r.present(9, 11)
    assert not r.present(25, 45)
    assert not r.present(49, 51)
    assert not r.present(30, 31)


def test_find_missing_lists_the_gaps_in_order() -> None:
    r = Ranges([(10, 20), (30, 40)])
    assert r.find_missing(0, 50) == [(0, 10), (20, 30), (40, 50)]
    assert r.find_missing(15, 35) == [(20, 30)]
    assert r.find_missing(12, 18) == []
    assert r.find_missing(20, 30) == [(20, 30)]
    assert r.find_missing(38, 45) == [(40, 45)]


def test_overlap_counts_held_bytes() -> None:
    r = Ranges([(10, 20), (30, 40)])
    assert r.overlap(0, 50) == 20
    assert r.overlap(15, 35) == 10
    assert r.overlap(20, 30) == 0


def test_json_round_trip() -> None:
    r = Ranges([(0, 4096), (8192, 1 << 40)])
    text = r.to_json()
    assert text == "[[0, 4096], [8192, 1099511627776]]"
    assert Ranges.from_json(text) == r
    assert Ranges.from_json(None) == Ranges()
    assert Ranges.from_json("") == Ranges()


def test_equality_is_by_content() -> None:
    assert Ranges([(0, 5), (5, 10)]) == Ranges([(0, 10)])
    assert Ranges([(0, 5)]) != Ranges([(0, 6)])
    assert Ranges() != [(0, 5)]
    assert repr(Ranges([(1, 2)])) == "Ranges([(1, 2)])"


# -- against a reference model --------------------------------------------------------------------

UNIVERSE = 200


def model_ranges(held: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted(held):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


def model_missing(held: set[int], start: int, end: int) -> list[tuple[int, int]]:
    return model_ranges(set(range(start, end)) - held)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_match_a_set_of_offsets(seed: int) -> None:
    rng = random.Random(seed)
    r = Ranges()
    held: set[int] = set()
    for step in range(3000):
        start = rng.randint(0, UNIVERSE)
        end = rng.randint(start, min(UNIVERSE, start + rng.choice([1, 5, 20, 80])))
        op = rng.random()
        if op < 0.5:
            r.insert(start, end)
            held |= set(range(start, end))
        elif op < 0.8:
            r.remove(start, end)
            held -= set(range(start, end))
        elif op < 0.9:
            r = Ranges.from_json(r.to_json())
        context = (seed, step, start, end, list(r))
        assert list(r) == model_ranges(held), context
        assert r.total == len(held), context
        assert r.present(start, end) == set(range(start, end)).issubset(held), context
        assert r.find_missing(start, end) == model_missing(held, start, end), context
        assert r.overlap(start, end) == len(set(range(start, end)) & held), context
