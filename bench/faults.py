"""Faults that used to hang or bloat the daemon (issue 13), measured on the real engine:

  - stop under a flood: a task prints 2 KB lines as fast as it can (`yes`); the time from
    stopTBRun until the run is stored and its container gone. Goal: under 5 s.
  - peak RSS with a 1 GiB verifier directory: the engine (in a fresh process, as the daemon
    runs it) copies /logs/verifier out after a test.sh that writes 1 GiB there; beside it
    the same run with an empty directory. Goal: under 200 MB.

    .venv/bin/python bench/faults.py
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.engine.run import Engine, RunConfig  # noqa: E402
from daemon.sandbox.docker.provider import DockerSandboxes, connect, instance_name  # noqa: E402
from daemon.store import Store  # noqa: E402
from daemon.tasks.loader import load  # noqa: E402
from protocol.events import TBTaskOutput  # noqa: E402

FLOOD = "yes \"$(head -c 2000 /dev/zero | tr '\\0' x)\""


def make_task(root: Path, test_body: str) -> Path:
    task = root / "task"
    for sub in ("tests", "solution", "environment"):
        (task / sub).mkdir(parents=True)
    (task / "task.toml").write_text('version = "1.0"\n[environment]\n'
                                    'docker_image = "tbhud/base:bookworm"\n')
    (task / "instruction.md").write_text("Do the task.")
    (task / "solution" / "solve.sh").write_text("#!/bin/bash\ntrue\n")
    (task / "tests" / "test.sh").write_text(
        "#!/bin/bash\nmkdir -p /logs/verifier\n" + test_body
        + "echo 1 > /logs/verifier/reward.txt\n")
    return task


async def stop_under_flood(home: Path) -> float:
    got_output = trio.Event()

    def emit(event: object) -> None:
        if isinstance(event, TBTaskOutput) and event.source == "agent":
            got_output.set()

    client = await trio.to_thread.run_sync(connect)
    with Store(home) as store:
        engine = Engine(store, emit, DockerSandboxes(client, instance=instance_name(home)))
        suite = load(make_task(home, ""))
        config = RunConfig(agent="command", agent_options={"command": FLOOD})
        async with trio.open_nursery() as nursery:
            run_id = await nursery.start(engine.run, suite, list(suite.tasks), config)
            await got_output.wait()
            started = time.monotonic()
            engine.stop_run(run_id)
        return time.monotonic() - started


async def one_run(home: Path, test_body: str) -> None:
    client = await trio.to_thread.run_sync(connect)
    with Store(home) as store:
        engine = Engine(store, lambda _e: None,
                        DockerSandboxes(client, instance=instance_name(home)))
        suite = load(make_task(home, test_body))
        await engine.run(suite, list(suite.tasks), RunConfig())


def peak_rss_mb(big: bool) -> float:
    """Peak RSS of a fresh process running one task (with or without 1 GiB to copy)."""
    out = subprocess.run([sys.executable, __file__, "--child", "big" if big else "empty"],
                         capture_output=True, text=True, check=True, timeout=1200)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=["big", "empty"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tbhud-bench-") as tmp:
        home = Path(tmp)
        if args.child:
            body = "head -c 1073741824 /dev/zero > /logs/verifier/big.bin\n" \
                if args.child == "big" else ""
            trio.run(one_run, home, body)
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            return
        stop_sec = trio.run(stop_under_flood, home)
    empty, big = peak_rss_mb(False), peak_rss_mb(True)
    print(f"stop under a flood:                {stop_sec:6.2f} s   (goal < 5 s)")
    print(f"peak RSS, empty /logs/verifier:    {empty:6.1f} MB")
    print(f"peak RSS, 1 GiB /logs/verifier:    {big:6.1f} MB  (goal < 200 MB; "
          f"x{big / empty:.2f} of the empty run)")


if __name__ == "__main__":
    main()
