"""Girder names → POSIX names: every object reachable under a unique, valid, stable name."""

from __future__ import annotations

import hashlib
import random
import unicodedata

import pytest

from wtfs.namespace.names import NAME_MAX, escape_name, posix_names


def oid(n: int) -> str:
    """A Girder-style 24-hex-digit id; a larger n sorts later."""
    return f"{n:024x}"


def assert_valid_posix_name(name: str) -> None:
    data = name.encode()
    assert 0 < len(data) <= NAME_MAX, (name, len(data))
    assert "/" not in name and "\0" not in name, name
    assert name not in (".", ".."), name


# -- single names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("girder", "posix"),
    [
        ("plain.txt", "plain.txt"),
        ("a/b", "a%2Fb"),
        ("a/b/c", "a%2Fb%2Fc"),
        ("/", "%2F"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        ("", "%00"),
        ("nul\0byte", "nul%00byte"),
        ("tab\there", "tab%09here"),
        ("line\nbreak", "line%0Abreak"),
        ("del\x7f", "del%7F"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("a.b.", "a.b."),
        ("spaces are fine", "spaces are fine"),
        ("日本語.csv", "日本語.csv"),
        ("%2F", "%2F"),
    ],
)
def test_names_posix_cannot_show_are_escaped(girder: str, posix: str) -> None:
    assert escape_name(girder) == posix


def test_a_lone_surrogate_becomes_a_replacement_character() -> None:
    escaped = escape_name("bad\ud800name")
    assert escaped == "bad\ufffdname"
    escaped.encode()  # encodable as UTF-8


def test_a_name_of_exactly_255_bytes_is_kept() -> None:
    name = "a" * 251 + ".txt"
    assert escape_name(name) == name


def test_a_long_name_is_cut_keeping_its_extension_and_a_hash() -> None:
    name = "a" * 300 + ".tar"
    escaped = escape_name(name)
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    assert len(escaped.encode()) == NAME_MAX
    assert escaped.endswith(f"~{digest}.tar")
    assert escaped.startswith("a" * 200)


@pytest.mark.parametrize("char", ["é", "日", "🎉"])
def test_a_long_multibyte_name_is_cut_on_a_character_boundary(char: str) -> None:
    name = char * 200 + ".dat"
    escaped = escape_name(name)
    data = escaped.encode()
    assert len(data) <= NAME_MAX
    assert len(data) > NAME_MAX - len(char.encode())  # the budget is used, not wasted
    assert data.decode() == escaped  # no half character
    assert escaped.endswith(".dat")
    stem = escaped[: -len("~12345678.dat")]
    assert set(stem) == {char}


def test_two_long_names_sharing_a_prefix_stay_distinct() -> None:
    a = "x" * 300 + "-version-1.bin"
    b = "x" * 300 + "-version-2.bin"
    assert escape_name(a) != escape_name(b)


def test_escaping_that_grows_a_name_past_the_limit_still_fits() -> None:
    name = "/" * 200  # 200 chars, 600 bytes once escaped
    escaped = escape_name(name)
    assert_valid_posix_name(escaped)
    assert escaped.startswith("%2F%2F")


# -- sibling lists --------------------------------------------------------------------------------


def test_names_that_need_nothing_are_unchanged() -> None:
    assert posix_names([("a", oid(2)), ("b", oid(1))]) == ["a", "b"]


def test_the_smallest_id_keeps_a_duplicated_name() -> None:
    children = [("data.csv", oid(9)), ("data.csv", oid(3)), ("data.csv", oid(5))]
    names = posix_names(children)
    assert names[1] == "data.csv"
    assert names[0] == f"data~{oid(9)[-8:]}.csv"
    assert names[2] == f"data~{oid(5)[-8:]}.csv"


def test_a_girder_name_that_looks_like_an_escape_does_not_collide() -> None:
    children = [("a/b", oid(1)), ("a%2Fb", oid(2))]
    names = posix_names(children)
    assert names[0] == "a%2Fb"
    assert names[1] != "a%2Fb"
    assert len(set(names)) == 2


def test_dot_and_dotdot_siblings_are_all_reachable() -> None:
    names = posix_names([(".", oid(1)), ("..", oid(2)), ("%2E", oid(3)), ("", oid(4))])
    assert names[:2] == ["%2E", "%2E%2E"]
    assert len(set(names)) == 4
    for name in names:
        assert_valid_posix_name(name)


def test_nfc_and_nfd_spellings_are_both_kept_as_they_are() -> None:
    nfc = unicodedata.normalize("NFC", "café.txt")
    nfd = unicodedata.normalize("NFD", "café.txt")
    assert nfc != nfd
    assert posix_names([(nfc, oid(2)), (nfd, oid(1))]) == [nfc, nfd]


def test_a_suffix_already_taken_by_a_plain_name_is_widened() -> None:
    clash = f"a~{oid(7)[-8:]}"
    children = [("a", oid(1)), ("a", oid(7)), (clash, oid(9))]
    names = posix_names(children)
    assert names[0] == "a"
    assert names[2] == clash  # a real name beats a generated one
    assert names[1] == f"a~{oid(7)[-9:]}"


def test_duplicated_long_names_stay_within_the_limit_and_unique() -> None:
    name = "é" * 200 + ".h5"
    names = posix_names([(name, oid(i)) for i in range(5)])
    assert len(set(names)) == 5
    for n in names:
        assert_valid_posix_name(n)
        assert n.endswith(".h5")


def test_the_same_children_always_get_the_same_names() -> None:
    children = [("x", oid(4)), ("x", oid(2)), ("y/z", oid(3)), ("", oid(1))]
    assert posix_names(children) == posix_names(list(children))


HOSTILE = ["a", "b", ".", "/", "\0", "\n", "é", "e\u0301", "日", "🎉", "%", "2", "F", "E", "~"]


def random_children(rng: random.Random) -> list[tuple[str, str]]:
    children: list[tuple[str, str]] = []
    ids = rng.sample(range(1, 10**6), rng.randint(1, 9))
    for n in ids:
        if children and rng.random() < 0.4:
            name = rng.choice(children)[0]
        elif rng.random() < 0.15:
            name = "".join(rng.choices(HOSTILE, k=rng.randint(90, 300)))
        else:
            name = "".join(rng.choices(HOSTILE, k=rng.randint(0, 4)))
        children.append((name, oid(n)))
    return children


@pytest.mark.parametrize("seed", range(4))
def test_random_hostile_siblings_get_unique_valid_order_independent_names(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        children = random_children(rng)
        names = posix_names(children)
        assert len(names) == len(children)
        assert len(set(names)) == len(names), children
        for name in names:
            assert_valid_posix_name(name)
        # Deterministic regardless of input order.
        shuffled = list(zip(children, names, strict=True))
        rng.shuffle(shuffled)
        again = posix_names([c for c, _ in shuffled])
        assert again == [n for _, n in shuffled], children
        # The smallest id among those whose escaped name is X keeps X.
        by_escaped: dict[str, list[int]] = {}
        for i, (name, _) in enumerate(children):
            by_escaped.setdefault(escape_name(name), []).append(i)
        for escaped, members in by_escaped.items():
            first = min(members, key=lambda i: children[i][1])
            assert names[first] == escaped
