"""The engine: a run of a suite's tasks (`run.py`), one task's phases (`task.py`) and the
verdict read from the verifier's files (`verdict.py`). It sees tasks, agents and a sandbox
provider; it reports everything as protocol events through one `emit` callable."""

from daemon.engine.run import Engine, RunConfig, new_run_id

__all__ = ["Engine", "RunConfig", "new_run_id"]
