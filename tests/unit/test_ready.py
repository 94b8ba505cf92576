"""The ready handshake (wtfs/daemon/ready.py) between a real child process and its starter.

The mounts themselves use it everywhere: `wtfs mount` in the background (tests/mount/
test_mount.py), tests/support/mounts.py, the sidecar in tests/mount/test_containers.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from wtfs.daemon.ready import Answer, ReadyPipe, parse


def child(pipe: ReadyPipe, code: str) -> subprocess.Popen[bytes]:
    """A Python process that runs `code` with `fd` bound to the pipe's write end."""
    process = subprocess.Popen(
        [sys.executable, "-c", f"import time; fd = {pipe.fd}\n{code}"], pass_fds=(pipe.fd,)
    )
    pipe.started()
    return process


@pytest.mark.parametrize(
    ("code", "answer"),
    [
        ("from wtfs.daemon.ready import send; send(fd, 0)", Answer("ready")),
        (
            "from wtfs.daemon.ready import send; send(fd, 2, 'mountpoint /x: not empty')",
            Answer("failed", 2, "mountpoint /x: not empty"),
        ),
        (
            "from wtfs.daemon.ready import send; send(fd, 1, 'first line\\nsecond line')",
            Answer("failed", 1, "first line second line"),  # the answer is one line
        ),
        ("raise SystemExit(1)", Answer("closed")),  # died before it could say anything
        (  # what the starter tells its user first (each one line), then the answer
            "from wtfs.daemon.ready import send; send(fd, 0, '', ['small disk', 'two\\nlines'])",
            Answer("ready", warnings=("small disk", "two lines")),
        ),
        (
            "import os; os.write(fd, b'WARN one\\n'); time.sleep(0.3); os.write(fd, b'OK\\n')",
            Answer("ready", warnings=("one",)),  # lines that arrive apart are read apart
        ),
    ],
)
def test_the_starter_reads_what_the_daemon_said(code: str, answer: Answer) -> None:
    pipe = ReadyPipe()
    process = child(pipe, code)
    assert pipe.wait(30) == answer
    process.wait(timeout=30)


def test_a_daemon_that_says_nothing_in_time_is_a_timeout() -> None:
    pipe = ReadyPipe()
    process = child(pipe, "time.sleep(30)")
    try:
        answer = pipe.wait(0.2)
        assert answer == Answer("timeout") and not answer.ready
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_daemon_that_could_not_be_started_leaves_no_descriptor_open() -> None:
    pipe = ReadyPipe()
    pipe.close()
    pipe.close()  # idempotent, as started() is
    assert pipe.fd == -1


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        ("OK", Answer("ready")),
        ("ERR 2 bad", Answer("failed", 2, "bad")),
        ("ERR 1", Answer("failed", 1, "")),
        ("ERR x what", Answer("closed", cause="ERR x what")),
        ("", Answer("closed")),
        (None, Answer("timeout")),
    ],
)
def test_answer_lines(line: str | None, answer: Answer) -> None:
    assert parse(line) == answer
