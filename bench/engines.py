"""What spreading a run over several engines costs: the scheduler's own overhead.

The same 16 no-op tasks (nop agent, a verifier that writes reward 1) run, alternating rounds
in one process:
  - on one engine with S slots (engines.toml: one [[engine]]), and
  - split over two engines with S/2 slots each (two [[engine]]s).
Both "engines" are this machine's dockerd, reached twice through its socket: the hardware
and the Docker work are the same, so the ratio is what the pool's placement, its per-engine
image checks and its health bookkeeping add. Goal: two / one <= 1.05.

    .venv/bin/python bench/engines.py [--tasks 16] [--slots 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.engine_overhead import make_dataset  # noqa: E402
from daemon.engine.run import Engine, RunConfig  # noqa: E402
from daemon.sandbox import open_pool  # noqa: E402
from daemon.store import Store  # noqa: E402
from daemon.tasks.loader import load  # noqa: E402

SOCKET = "unix:///var/run/docker.sock"


def engines_file(path: Path, names: list[str], slots: int) -> Path:
    path.write_text("".join(f'[[engine]]\nname = "{n}"\nurl = "{SOCKET}"\nslots = {slots}\n'
                            for n in names))
    return path


def run_once(dataset: Path, home: Path, engines: Path) -> tuple[float, dict[str, int]]:
    """Wall time of the run, and how many tasks each engine took."""
    home.mkdir(parents=True)
    store = Store(home)
    suite = load(dataset)

    async def main() -> tuple[float, dict[str, int]]:
        pool = await open_pool(home, engines)
        engine = Engine(store, lambda _e: None, pool)
        config = RunConfig(agent="nop", concurrency=pool.capacity, container_stats=False)
        started = time.perf_counter()
        report = await engine.run(suite, list(suite.tasks), config)
        elapsed = time.perf_counter() - started
        assert report.passed == len(suite.tasks), report
        used: dict[str, int] = {}
        for result in report.tasks:
            used[result.engine or "-"] = used.get(result.engine or "-", 0) + 1
        return elapsed, used

    try:
        return trio.run(main)
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--slots", type=int, default=4, help="total slots (even)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = make_dataset(root, args.tasks)
        one = engines_file(root / "one.toml", ["one"], args.slots)
        two = engines_file(root / "two.toml", ["a", "b"], args.slots // 2)
        run_once(dataset, root / "warmup", one)  # first contact: connections, page cache
        one_times, two_times, spread = [], [], {}
        for r in range(args.rounds):
            one_times.append(run_once(dataset, root / f"one-{r}", one)[0])
            elapsed, spread = run_once(dataset, root / f"two-{r}", two)
            two_times.append(elapsed)
    t1, t2 = statistics.median(one_times), statistics.median(two_times)
    print(f"{args.tasks} no-op tasks, {args.slots} slots in all, x {args.rounds} rounds "
          "(median of rounds)")
    print(f"one engine  ({args.slots} slots):       {t1:6.2f} s")
    print(f"two engines ({args.slots // 2}+{args.slots // 2} slots):     {t2:6.2f} s   "
          f"tasks per engine: {spread}")
    print(f"ratio two / one: {t2 / t1:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
