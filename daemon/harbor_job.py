"""Harbor job directories, read into tbhud's history (`tbhud import JOB_DIR`).

A Harbor job directory, as Harbor writes it:

    JOB_DIR/config.json              the job's configuration (job_name, agents: [{name,
                                     model_name}], ...)
    JOB_DIR/result.json              the job's own result (id, started_at, finished_at, ...)
    JOB_DIR/<trial>/result.json      one per trial: task_name, trial_name, started_at,
                                     finished_at, agent_info, agent_result (n_input_tokens,
                                     n_output_tokens, n_cache_tokens, cost_usd),
                                     verifier_result ({rewards: {reward: x, ...}}),
                                     exception_info ({exception_type, exception_message})

Each trial becomes a task result: reward >= 1 `success`, < 1 `failure`; an agent timeout
exception `timeout`; any other exception (or no reward) `error` with its message. Pure
reading here; `import_job` writes the run into a Store.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from daemon.store import Store
from daemon.tasks.model import LoadError
from protocol import RunReport, TaskResult

# Harbor's exception types for an agent that ran past its time limit.
AGENT_TIMEOUTS = ("AgentTimeoutError", "AgentExecutionTimeoutError")


@attrs.frozen
class HarborJob:
    run_id: str
    name: str
    agent: str
    timestamp: str
    duration_ms: int
    results: list[TaskResult]
    path: str


def read_job(job_dir: Path) -> HarborJob:
    """The job at `job_dir`; LoadError naming the file and field when it is not one."""
    if not job_dir.is_dir():
        raise LoadError(job_dir, None, "expected a Harbor job directory")
    config = _read_json(job_dir / "config.json", required=False) or {}
    job = _read_json(job_dir / "result.json", required=False) or {}
    trials = sorted(p.parent for p in job_dir.glob("*/result.json"))
    if not trials:
        raise LoadError(job_dir, None, "no trial directory with a result.json: expected "
                        "a Harbor job directory (JOB_DIR/<trial>/result.json)")
    raw = [(trial, _read_json(trial / "result.json", required=True)) for trial in trials]
    names = [str(data.get("task_name") or trial.name) for trial, data in raw]
    repeated = {n for n in names if names.count(n) > 1}
    # Several attempts of one task: each keeps its trial's name, so none hides another.
    results = [_result(trial.name if name in repeated else name, data, trial)
               for (trial, data), name in zip(raw, names, strict=True)]
    starts = [t for _, d in raw if (t := _time(d.get("started_at")))]
    ends = [t for _, d in raw if (t := _time(d.get("finished_at")))]
    started = _time(job.get("started_at")) or (min(starts) if starts else None)
    finished = _time(job.get("finished_at")) or (max(ends) if ends else None)
    duration = _ms(started, finished) if started and finished else sum(
        r.duration_ms for r in results)
    agents = config.get("agents") or [{}]
    agent = agents[0] if isinstance(agents, list) and agents else {}
    agent_name = str(agent.get("name") or _first_agent(raw) or "unknown")
    model = agent.get("model_name")
    name = str(config.get("job_name") or job_dir.name)
    return HarborJob(
        run_id=f"harbor-{job.get('id') or name}",
        name=name, agent=f"harbor:{agent_name}" + (f" ({model})" if model else ""),
        timestamp=(started.isoformat() if started else ""), duration_ms=duration,
        results=results, path=str(job_dir.resolve()))


def import_job(store: Store, job_dir: Path) -> RunReport:
    """Read the job and record it as one run (again: an imported run is replaced)."""
    job = read_job(job_dir)
    store.forget_run(job.run_id)
    store.begin_run(job.run_id, suite_name=job.name, suite_version="", suite_path=job.path,
                    agent=job.agent, task_ids=[r.task_id for r in job.results],
                    timestamp=job.timestamp)
    for result in job.results:
        store.record_task(job.run_id, result)
    return store.finish_run(job.run_id, status="completed", total_duration_ms=job.duration_ms)


def _result(task_id: str, data: dict[str, Any], trial: Path) -> TaskResult:
    shown = str(trial / "result.json")
    exception = data.get("exception_info") or {}
    verifier = data.get("verifier_result") or {}
    rewards = verifier.get("rewards") if isinstance(verifier, dict) else None
    reward = _number((rewards or {}).get("reward"), shown, "verifier_result.rewards.reward")
    agent = data.get("agent_result") or {}
    tokens = [_number(agent.get(k), shown, f"agent_result.{k}")
              for k in ("n_input_tokens", "n_output_tokens", "n_cache_tokens")]
    counted = [t for t in tokens if t is not None]
    cost = _number(agent.get("cost_usd"), shown, "agent_result.cost_usd")
    started, finished = _time(data.get("started_at")), _time(data.get("finished_at"))
    duration = _ms(started, finished) if started and finished else 0
    if exception:
        kind = str(exception.get("exception_type") or "error")
        message = f"{kind}: {exception.get('exception_message') or ''}".strip(": ")
        outcome = "timeout" if kind in AGENT_TIMEOUTS else "error"
    elif reward is None:
        outcome, message = "error", "Harbor recorded no reward for this trial"
    else:
        outcome, message = ("success" if reward >= 1 else "failure"), None
    return TaskResult(task_id=task_id, outcome=outcome, duration_ms=duration,  # type: ignore[arg-type]
                      tests_passed=None, tests_total=None, reward=reward, turns=None,
                      tokens=int(sum(counted)) if counted else None, cost_usd=cost,
                      error=message)


def _read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise LoadError(path, None, "missing") from None
        return None
    except (OSError, ValueError) as exc:
        raise LoadError(path, None, f"not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LoadError(path, None, f"expected a JSON object, got {type(data).__name__}")
    return data


def _number(value: Any, file: str, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LoadError(file, field, f"expected a number, got {value!r}")
    return float(value)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _ms(start: datetime, end: datetime) -> int:
    try:
        return max(0, int((end - start).total_seconds() * 1000))
    except TypeError:  # one naive, one aware: Harbor writes both in the wild
        return max(0, int((end.replace(tzinfo=None) - start.replace(tzinfo=None))
                          .total_seconds() * 1000))


def _first_agent(raw: list[tuple[Path, dict[str, Any]]]) -> str | None:
    for _, data in raw:
        info = data.get("agent_info") or {}
        if isinstance(info, dict) and info.get("name"):
            return str(info["name"])
    return None
