"""The client stands alone: in a venv with only trio, trio-websocket, prompt_toolkit, attrs
and cattrs (no docker SDK), `tbhud --help`, `status`, `history`, `events` and the HUD work
against a daemon elsewhere (--url), here one started by the test from the normal venv."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import ROOT, make_task, our_containers
from tests.test_hud_tmux import Tmux

CLIENT_PACKAGES = ["trio", "trio-websocket", "prompt_toolkit", "attrs", "cattrs"]


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv's python with the client's five packages and nothing else; the project comes
    from PYTHONPATH (see `bare_env`)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *CLIENT_PACKAGES], check=True, timeout=600)
    return python


def bare_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    return env | {"PYTHONPATH": str(ROOT), "TBHUD_HOME": str(home)}


@pytest.fixture
def remote_daemon(home: Path, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """(url, token, suite): a daemon started with `python -m daemon` from the normal venv,
    listening on a free port, with a two-task suite loaded."""
    env = {**os.environ, "TBHUD_HOME": str(home)}

    def daemon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    started = daemon("start", "--json", "--listen", "127.0.0.1:0")
    assert started.returncode == 0, started.stderr
    try:
        status = json.loads(started.stdout)
        suite = tmp_path / "suite"
        make_task(suite, "alpha-task", test="echo 1 > /logs/verifier/reward.txt\n")
        make_task(suite, "beta-task", test="echo 1 > /logs/verifier/reward.txt\n")
        loaded = subprocess.run([sys.executable, "-m", "client", "load", str(suite)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert loaded.returncode == 0, loaded.stderr
        yield status["url"], Path(status["tokenFile"]).read_text().strip(), suite
    finally:
        stopped = daemon("stop")
        assert stopped.returncode == 0, stopped.stderr


def test_client_without_docker_sdk_drives_a_daemon_by_url(
        bare_python: Path, remote_daemon: tuple[str, str, Path], tmp_path: Path,
        docker_client: docker.DockerClient, home: Path) -> None:
    url, token, suite = remote_daemon
    client_home = tmp_path / "client-home"  # no daemon, no token file here
    client_home.mkdir()
    env = bare_env(client_home)
    remote = ["--url", url, "--token", token]

    def tbhud(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bare_python), "-m", "client", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    # The test proves what it says: this venv has no docker SDK.
    no_docker = subprocess.run([str(bare_python), "-c", "import docker"], env=env,
                               capture_output=True, text=True, timeout=60)
    assert no_docker.returncode != 0 and "No module named 'docker'" in no_docker.stderr

    helped = tbhud("--help")
    assert helped.returncode == 0 and "hud" in helped.stdout, helped.stderr
    # What needs the engine here says so in one line: autostarting a local daemon, and
    # `tbhud run` in-process.
    for args in (["load", str(suite)], ["run", str(suite)]):
        failed = tbhud(*args)
        assert failed.returncode == 1 and "No module named 'docker'" in failed.stderr
        assert "Traceback" not in failed.stderr

    status = tbhud("status", "--json", *remote)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["suite"]["path"] == str(suite)
    assert [t["id"] for t in state["suite"]["tasks"]] == ["alpha-task", "beta-task"]

    history = tbhud("history", "--json", *remote)
    assert history.returncode == 0, history.stderr
    assert json.loads(history.stdout) == []

    watcher = subprocess.Popen([str(bare_python), "-m", "client", "events", *remote],
                               cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())  # subscribed: the history comes first
        assert first["type"] == "tb_run_history" and first["runs"] == []
    finally:
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=30) == 0

    tmux = Tmux(f"tbhud-test-{secrets.token_hex(4)}")
    try:
        hud = " ".join([str(bare_python), "-m", "client", "hud", *remote])
        tmux.start("hud", f"{hud}; echo HUD-EXITED $?; sleep 600",
                   env={"PYTHONPATH": str(ROOT), "TBHUD_HOME": str(client_home)})
        tmux.wait_for("● connected", "Tasks 2/2", "alpha-task", "beta-task")
        tmux.keys("q")
        tmux.wait_for("HUD-EXITED 0")
    finally:
        tmux.kill()
    assert not (client_home / "tbhud.sqlite3").exists()
    assert our_containers(docker_client, home) == []
