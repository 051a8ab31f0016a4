"""`--ssh HOST`: the daemon on another box through ssh's stdio (`ssh HOST tbhud dial-stdio`),
tested through a private openssh-server on 127.0.0.1 (its own port, host key, config and
authorized key; stopped at the end). The far side's daemon starts on demand, no TCP port is
opened for it and no token is copied."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_task
from tests.test_hud_tmux import PASS_TEST, TBHUD, Tmux, save

pytestmark = pytest.mark.docker

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An sshd of our own on a free port; the environment that makes tbhud's ssh use it."""
    assert Path(SSHD).exists(), "openssh-server is needed (.ci/setup installs it)"
    box = tmp_path / "sshd"
    box.mkdir(mode=0o700)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(box / key)],
                       check=True, timeout=30)
    (box / "authorized_keys").write_text((box / "client_key.pub").read_text())
    port = free_port()
    (box / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {box / 'host_key'}\n"
        f"PidFile {box / 'sshd.pid'}\nAuthorizedKeysFile {box / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    log = open(box / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(box / "sshd_config")],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (box / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not listen"
                time.sleep(0.05)
        yield {"TBHUD_SSH": f"ssh -i {box / 'client_key'} -p {port} -o "
                            "StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                            "-o LogLevel=ERROR"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_hud_and_commands_over_ssh(home: Path, tmp_path: Path, sshd: dict[str, str]) -> None:
    assert shutil.which("tmux"), "tmux is needed for the real-terminal test"
    far = tmp_path / "far-home"  # the other box's tbhud home (the same machine here)
    far.mkdir()
    remote = f"env TBHUD_HOME={far} TBHUD_LISTEN=none {sys.executable} -m client"
    suite = tmp_path / "suite"
    make_task(suite, "a-fast", solve="touch /tmp/done\n", test=PASS_TEST)
    # Here: no daemon of our own (TBHUD_HOME is empty) and none is started here.
    env = {**os.environ, **sshd, "TBHUD_SSH_REMOTE": remote, "TBHUD_HOME": str(home)}
    tmux = Tmux(f"tbhud-test-{secrets.token_hex(4)}")
    try:
        loaded = subprocess.run([*TBHUD, "load", "--ssh", "root@127.0.0.1", str(suite),
                                 "--json"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        assert json.loads(loaded.stdout)["tasks"][0]["id"] == "a-fast"
        assert (far / "run" / "daemon.json").exists()  # started there, on demand
        assert not (home / "run").exists()  # and not here

        hud = " ".join([*TBHUD, "hud", "--ssh", "root@127.0.0.1"])
        tmux.start("hud", hud, env={k: env[k] for k in ("TBHUD_SSH", "TBHUD_SSH_REMOTE",
                                                         "TBHUD_HOME")})
        screen = tmux.wait_for("● connected", "Tasks 1/1", "a-fast", f"Suite: {suite}"[:40])
        save("ssh-80x24-attached", screen)
        tmux.keys("C-t")
        screen = tmux.wait_for("TB: suite 1/1", "✓ 1", timeout=180)
        save("ssh-80x24-finished", screen)
        tmux.keys("q")
    finally:
        tmux.kill()
        subprocess.run([*TBHUD, "daemon", "stop"], cwd=ROOT, capture_output=True,
                       env={**os.environ, "TBHUD_HOME": str(far)}, timeout=120)
