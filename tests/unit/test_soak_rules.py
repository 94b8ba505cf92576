"""The soak's own acceptance rules (tests/support/soak.py), on the series a run recorded: a rule
that passes a leak, or fails a healthy run, makes the soak in CI say the wrong thing."""

from __future__ import annotations

from tests.support.soak import WINDOW, WINDOWED, SoakResult, Tally


def result(fds: list[int]) -> SoakResult:
    """A run with nothing wrong but daemon 0's open fds, sampled every 5 s."""
    tally = Tally()
    seconds = 5.0 * len(fds)
    for window in range(int(seconds // WINDOW)):
        tally.windows[window] = 100
    rows = [
        {"t": 5.0 * i, "fd0": float(n), "rss0": 45.0, "disk": 50.0, "usage": 50.0}
        for i, n in enumerate(fds)
    ]
    daemon = {"alive_at_end": True, "traceback": False}
    return SoakResult(WINDOWED, seconds, rows, tally, [daemon], {}, 0)


def test_fds_that_swing_under_load_are_no_leak() -> None:
    # A CI run of the windowed soak: store files and connections open and close by the ten.
    swinging = [18, 26, 23, 25, 24, 25, 27, 27, 32, 22, 22, 29, 25, 22, 21, 22]
    assert result(swinging).problems() == []


def test_fds_that_stay_open_are_a_leak() -> None:
    leaking = [18, 22, 24, 23, 25, 22, 24, 23, 27, 29, 30, 31, 30, 32, 33, 34]
    assert result(leaking).problems() == [
        "daemon 0: open fds rose from a median of 23 to 30 in the second half"
    ]
