"""What tbhud's engine adds on top of the raw Docker work of a task.

The same N no-op tasks (nop agent, a verifier that writes reward 1) run twice, alternating
rounds in one process so both see the same machine:
  - through tbhud's engine (in-process, as `tbhud run` does it), and
  - as the equivalent raw `docker` CLI steps: create + start a limited container, copy the
    instruction in, clear /tests, copy the tests in, run test.sh, copy /logs/verifier out,
    remove the container.
Prints wall time per task for each and the ratio tbhud / raw. Goal: ratio <= 1.25.

    .venv/bin/python bench/engine_overhead.py [--tasks 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
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
from daemon.tasks.model import BASE_IMAGE  # noqa: E402

TEST_SH = "#!/bin/bash\nmkdir -p /logs/verifier\necho 1 > /logs/verifier/reward.txt\n"


def make_dataset(root: Path, n: int, *, solve: bool = False) -> Path:
    """N tasks on the base image whose verifier writes reward 1 (with a no-op solve.sh for
    the oracle when `solve`)."""
    for i in range(n):
        task = root / "tasks" / f"noop-{i:03d}"
        (task / "tests").mkdir(parents=True)
        (task / "task.toml").write_text(
            f'version = "1.0"\n[environment]\ndocker_image = "{BASE_IMAGE}"\n'
            "cpus = 1\nmemory_mb = 512\n")
        (task / "instruction.md").write_text("Do nothing.\n")
        (task / "tests" / "test.sh").write_text(TEST_SH)
        if solve:
            (task / "solution").mkdir()
            (task / "solution" / "solve.sh").write_text("#!/bin/bash\ntrue\n")
    return root / "tasks"


def run_tbhud(dataset: Path, home: Path) -> float:
    store = Store(home)
    sandboxes = DockerSandboxes(connect(), instance=instance_name(home))
    engine = Engine(store, lambda _e: None, sandboxes)
    suite = load(dataset)
    config = RunConfig(agent="nop", concurrency=1, container_stats=False)  # as run_raw: one by one
    started = time.perf_counter()
    report = trio.run(engine.run, suite, list(suite.tasks), config)
    elapsed = time.perf_counter() - started
    store.close()
    assert report.passed == len(suite.tasks), report
    return elapsed


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def run_raw(dataset: Path, out: Path) -> float:
    started = time.perf_counter()
    for task in sorted(dataset.iterdir()):
        raw_task(task, out)
    return time.perf_counter() - started


def raw_task(task: Path, out: Path) -> None:
    """One task as the raw docker CLI steps tbhud's engine takes (solve.sh when present)."""
    cid = docker("create", "--label", "tbhud.bench=1", "--cpus", "1", "--memory", "512m",
                 "--memory-swap", "512m", "--pids-limit", "1024",
                 "--security-opt", "no-new-privileges", "-w", "/app", BASE_IMAGE,
                 "sleep", "infinity")
    try:
        docker("start", cid)
        docker("exec", cid, "mkdir", "-p", "/tbhud")
        docker("cp", str(task / "instruction.md"), f"{cid}:/tbhud/instruction.md")
        if (task / "solution").is_dir():
            docker("cp", str(task / "solution"), f"{cid}:/solution")
            docker("exec", "-w", "/app", cid, "bash", "/solution/solve.sh")
        docker("exec", "-u", "0", cid, "sh", "-c",
               "rm -rf /tests /logs/verifier && mkdir -p /logs/verifier")
        docker("cp", str(task / "tests"), f"{cid}:/tests")
        docker("exec", "-w", "/app", cid, "bash", "/tests/test.sh")
        dest = out / task.name
        dest.mkdir(parents=True, exist_ok=True)
        docker("cp", f"{cid}:/logs/verifier", str(dest))
        assert (dest / "verifier" / "reward.txt").read_text().strip() == "1"
    finally:
        docker("rm", "-f", cid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), args.tasks)
        tbhud_times, raw_times = [], []
        run_tbhud(dataset, Path(tmp) / "warmup")  # first contact: connections, page cache
        for r in range(args.rounds):
            tbhud_times.append(run_tbhud(dataset, Path(tmp) / f"home-{r}"))
            raw_times.append(run_raw(dataset, Path(tmp) / f"raw-{r}"))
    t, raw = statistics.median(tbhud_times), statistics.median(raw_times)
    n = args.tasks
    print(f"{n} no-op tasks x {args.rounds} rounds (median of rounds)")
    print(f"  tbhud engine : {t:7.2f} s  ({t / n * 1000:6.0f} ms/task)")
    print(f"  raw docker   : {raw:7.2f} s  ({raw / n * 1000:6.0f} ms/task)")
    print(f"  ratio tbhud/raw = {t / raw:.2f}  (goal <= 1.25)")


if __name__ == "__main__":
    main()
