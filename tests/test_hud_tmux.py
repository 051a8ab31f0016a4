"""The HUD in a real terminal: a tmux session (80x24, then 160x48) running `tbhud hud PATH`
against `tbhud daemon --foreground` with a private TBHUD_HOME, driven with send-keys and read
with capture-pane. Real Docker. Synchronisation is by polling the screen with a deadline."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import ROOT, make_task, our_containers

pytestmark = pytest.mark.docker

# `python -m client` is `tbhud` (the daemon's own entry is `python -m daemon`).
TBHUD = [sys.executable, "-m", "client"]
SCREENS = Path(os.environ.get("TBHUD_SCREENS", "")) if os.environ.get("TBHUD_SCREENS") else None

PASS_TEST = ("test -f /tmp/done && echo PASSED && echo 1 > /logs/verifier/reward.txt "
             "|| echo 0 > /logs/verifier/reward.txt\n")


class Tmux:
    """A tmux server of our own (-L), so the user's sessions are never touched."""

    def __init__(self, name: str) -> None:
        self.server = name

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.server, *args], check=True, text=True,
                              capture_output=True, timeout=30).stdout

    def start(self, session: str, command: str, *, env: dict[str, str], x: int = 80,
              y: int = 24) -> None:
        flags = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        self.run("new-session", "-d", "-s", session, "-x", str(x), "-y", str(y),
                 "-c", str(ROOT), *flags, command)

    def screen(self, session: str = "hud", *, escapes: bool = False) -> str:
        return self.run("capture-pane", "-p", *(["-e"] if escapes else []),
                        "-t", f"{session}:0")

    def keys(self, *keys: str, session: str = "hud") -> None:
        self.run("send-keys", "-t", f"{session}:0", *keys)

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 60,
             session: str = "hud") -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(session)
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.1)  # polling interval, not synchronisation

    def wait_for(self, *texts: str, timeout: float = 60, session: str = "hud") -> str:
        return self.wait(lambda s: all(t in s for t in texts), " and ".join(map(repr, texts)),
                         timeout, session)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True,
                       timeout=30)


# SGR colour parameters: 30-37, 90-97 (foreground), 40-47, 100-107 (background), 38;/48;
COLOUR = re.compile(r"\x1b\[(?:[0-9]*;)*(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def save(name: str, screen: str) -> None:
    if SCREENS is not None:
        SCREENS.mkdir(parents=True, exist_ok=True)
        (SCREENS / f"{name}.txt").write_text(screen)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    root = tmp_path / "suite"
    root.mkdir()
    done = 'echo "step one"\necho "step two"\ntouch /tmp/done\n'
    make_task(root, "a-fast", solve=done, test=PASS_TEST)
    make_task(root, "b-fast", solve=done, test=PASS_TEST)
    make_task(root, "c-fails", solve='echo "not today"\n', test=PASS_TEST)
    make_task(root, "d-sleeps", solve='echo "going to sleep"\nsleep 300\n', test=PASS_TEST,
              toml="[agent]\ntimeout_sec = 900\n")
    return root


@pytest.fixture
def daemon(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "TBHUD_HOME": str(home), "TBHUD_LISTEN": "none"}
    log = open(home / "foreground.log", "wb")
    proc = subprocess.Popen([*TBHUD, "daemon", "--foreground"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (home / "run" / "daemon.json").exists():
            assert proc.poll() is None, (home / "foreground.log").read_text()
            assert time.monotonic() < deadline, "the daemon did not come up"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=120)
        log.close()


def test_hud_runs_and_stops_a_suite(home: Path, suite: Path, daemon: subprocess.Popen[bytes],
                                    docker_client: docker.DockerClient) -> None:
    assert shutil.which("tmux"), "tmux is needed for the real-terminal test"
    tmux = Tmux(f"tbhud-test-{secrets.token_hex(4)}")
    # Side by side, so that every running task shows in the progress widget.
    hud = " ".join([*TBHUD, "hud", str(suite), "--concurrency", "4"])
    try:
        tmux.start("hud", f"{hud}; echo HUD-EXITED $?; sleep 600", env={"TBHUD_HOME": str(home)})
        tmux.wait_for("● connected", f"Suite: {str(suite)[:30]}")  # PATH fills the field

        tmux.keys("C-l")
        screen = tmux.wait_for("Tasks 4/4", "a-fast", "b-fast", "c-fails", "d-sleeps")
        save("80x24-loaded", screen)

        tmux.keys("C-t")
        # The fast tasks finish; the sleeper runs and its output is live on screen.
        screen = tmux.wait_for("✓ 2  ✗ 1  ⏱ 0  ! 0", "▶ d-sleeps (agent)", "going to sleep",
                               "TB: suite 3/4", timeout=180)
        save("80x24-running", screen)
        assert "Output: d-sleeps (agent)" in screen
        # Its container, in the container panel.
        screen = tmux.wait_for("image tbhud/base:bookworm", "cpu ")
        assert our_containers(docker_client, home), "the sleeper's container should run"

        # A second HUD attached to the same daemon shows the same run (getState, then
        # events), here without colours (NO_COLOR) while the first one has them.
        tmux.start("second", hud, env={"TBHUD_HOME": str(home), "NO_COLOR": "1"})
        second = tmux.wait_for("✓ 2  ✗ 1  ⏱ 0  ! 0", "▶ d-sleeps (agent)", "going to sleep",
                               "TB: suite 3/4", session="second")
        save("80x24-second-hud", second)
        assert not COLOUR.search(tmux.screen("second", escapes=True))
        assert COLOUR.search(tmux.screen("hud", escapes=True))

        # 160x48 while it runs: the history sits below the output, the columns widen.
        tmux.run("resize-window", "-t", "hud:0", "-x", "160", "-y", "48")
        screen = tmux.wait(lambda s: len(s.splitlines()[0]) > 100 and "History" in s
                           and "▶ d-sleeps (agent)" in s, "the wide layout")
        save("160x48-running", screen)
        tmux.run("resize-window", "-t", "hud:0", "-x", "80", "-y", "24")
        tmux.wait(lambda s: len(s.splitlines()[0]) <= 80 and "History" not in s,
                  "the 80x24 layout again")

        tmux.keys("C-x")
        tmux.wait_for("y: stop")
        tmux.keys("y")
        screen = tmux.wait_for("stopped in", "✓ 2  ✗ 1  ⏱ 0  ! 1", "TB: suite 4/4", timeout=90)
        save("80x24-stopped", screen)
        tmux.wait_for("stopped in", "! 1", session="second")
        tmux.keys("q", session="second")
        deadline = time.monotonic() + 30
        while our_containers(docker_client, home):
            assert time.monotonic() < deadline, "a container outlived the stopped run"
            time.sleep(0.1)

        # The history knows the run; at 80x24 it takes the output pane's place.
        tmux.keys("h")
        tmux.wait_for("History", "50% 2/4 stopped")
        tmux.keys("Enter")
        screen = tmux.wait_for("[stopped]", "2/4 passed", "d-sleeps error")
        save("80x24-history", screen)
        tmux.keys("h")

        tmux.run("resize-window", "-t", "hud:0", "-x", "160", "-y", "48")
        screen = tmux.wait(lambda s: len(s.splitlines()[0]) > 100 and "History" in s
                           and "Output: d-sleeps" in s, "the wide layout")
        save("160x48-stopped", screen)
        tmux.run("resize-window", "-t", "hud:0", "-x", "80", "-y", "24")

        # The daemon goes away and comes back: the HUD says it is reconnecting, then shows
        # the same suite again (the restarted daemon reloads it) without a key pressed.
        daemon.terminate()
        daemon.wait(timeout=120)
        tmux.wait_for("reconnecting", timeout=30)
        env = {**os.environ, "TBHUD_HOME": str(home), "TBHUD_LISTEN": "none"}
        started = subprocess.run([*TBHUD, "daemon"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        try:
            # ... with the last run's results, as stored (d-sleeps was stopped: an error).
            screen = tmux.wait_for("● connected", "Tasks 4/4", "✓ a-fast", "! d-sleeps",
                                   timeout=30)
            save("80x24-reconnected", screen)
            tmux.keys("q")
            tmux.wait_for("HUD-EXITED 0")
            status = subprocess.run([*TBHUD, "daemon", "status"], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, "q must leave the daemon running"
        finally:
            subprocess.run([*TBHUD, "daemon", "stop"], cwd=ROOT, env=env, capture_output=True,
                           timeout=120)
    finally:
        tmux.kill()
