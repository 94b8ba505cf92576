"""A real OpenSSH server on loopback for SFTP tests.

    with running_sshd(tmp_path) as server:
        url = f"sftp://{server.user}@{server.host}:{server.port}/{path}"
        options = {"sftp": {"key_file": str(server.client_key),
                            "known_hosts": str(server.known_hosts)}}

or use the `sshd` fixture (import it into a test module or conftest). Everything lives in a
temporary directory: host key, client key, authorized_keys, sshd_config, pid file. Needs root
(sshd's privilege separation) and `/usr/sbin/sshd` + `ssh-keygen`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshdServer:
    host: str
    port: int
    user: str
    client_key: Path  # private key accepted by the server
    known_hosts: Path  # "[127.0.0.1]:PORT <host key>"
    root: Path  # the temporary directory holding everything
    log: Path  # sshd's stderr

    def sftp_url(self, path: str | os.PathLike[str]) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}/{str(path).lstrip('/')}"

    def options(self) -> dict[str, dict[str, object]]:
        return {"sftp": {"key_file": str(self.client_key), "known_hosts": str(self.known_hosts)}}

    def drop_connections(self) -> int:
        """Kill every per-connection sshd child (clients see the connection drop); the
        listener keeps running. Returns how many were killed."""
        main = int((self.root / "sshd.pid").read_text().split()[0])
        killed = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name (field 2) may hold spaces; the parent pid follows its ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == main:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
        return killed


def make_key(path: Path, comment: str = "wtfs-test") -> Path:
    """Create an unencrypted ed25519 key pair at `path` (+ `.pub`)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_banner(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def running_sshd(
    directory: str | os.PathLike[str], *, timeout: float = 15.0
) -> Iterator[SshdServer]:
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        raise RuntimeError(f"{SSHD} and ssh-keygen are needed (apt-get install openssh-server)")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    host_key = make_key(root / "host_ed25519_key", "wtfs-test-host")
    client_key = make_key(root / "client_ed25519_key", "wtfs-test-client")
    authorized = root / "authorized_keys"
    authorized.write_text((root / "client_ed25519_key.pub").read_text())
    authorized.chmod(0o600)
    # sshd refuses to start without its privilege separation directory.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = root / "sshd.log"
    for _ in range(5):  # another process may grab the free port before sshd binds it
        port = _free_port()
        config = root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "Subsystem sftp internal-sftp",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AllowUsers {user}",
                    "PermitRootLogin prohibit-password",
                    "MaxStartups 100",
                    "MaxAuthTries 10",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        with open(log, "ab") as err:
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=err)
        if _wait_for_banner(port, proc, timeout):
            break
        proc.kill()
        proc.wait()
    else:
        raise RuntimeError(f"sshd did not start; its log:\n{log.read_text()}")
    host_pub = (root / "host_ed25519_key.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    try:
        yield SshdServer("127.0.0.1", port, user, client_key, known_hosts, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdServer]:
    """One sshd per test module (starting one costs ~0.1-0.3 s, keys included)."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
