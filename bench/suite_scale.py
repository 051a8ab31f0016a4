"""A benchmark-sized run on this machine: an 89-task dataset (TB2's size) of small oracle
tasks at concurrency 8, through `tbhud run` (the real command, engine in-process) and as the
same steps with the raw docker CLI (8 workers), in one run. Prints wall times, their ratio,
tbhud's peak RSS and the containers left (must be 0).

    .venv/bin/python bench/suite_scale.py [--tasks 89] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from engine_overhead import docker, make_dataset, raw_task  # noqa: E402

from daemon.sandbox.docker import instance_name  # noqa: E402


def run_tbhud(dataset: Path, home: Path, concurrency: int) -> tuple[float, int, dict]:
    """Wall seconds, peak RSS in KiB and the --json summary of `tbhud run`."""
    env = {**os.environ, "TBHUD_HOME": str(home)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "client", "run", str(dataset), "--agent",
                             "oracle", "--concurrency", str(concurrency), "--json"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    # The child is reaped by communicate(); its peak RSS is in our children's usage.
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"tbhud run failed ({proc.returncode}): {err.decode()[-2000:]}")
    return elapsed, peak_kib, json.loads(out)


def run_raw(dataset: Path, out: Path, workers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda task: raw_task(task, out), sorted(dataset.iterdir())))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=89)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp), args.tasks, solve=True)
        tbhud_s, peak_kib, summary = run_tbhud(dataset, Path(tmp) / "home", args.concurrency)
        raw_s = run_raw(dataset, Path(tmp) / "raw", args.concurrency)
        left = [*docker("ps", "-aq", "--filter", "label=tbhud.bench=1").split(),
                *docker("ps", "-aq", "--filter",
                        f"label=tbhud={instance_name(Path(tmp) / 'home')}").split()]
    n = args.tasks
    print(f"{n} oracle tasks at concurrency {args.concurrency}")
    print(f"  tbhud run    : {tbhud_s:7.2f} s  ({summary['passed']}/{n} passed, "
          f"peak RSS {peak_kib / 1024:.0f} MiB)")
    print(f"  raw docker   : {raw_s:7.2f} s")
    print(f"  ratio tbhud/raw = {tbhud_s / raw_s:.2f}")
    print(f"  containers left: {len(left)}")


if __name__ == "__main__":
    main()
