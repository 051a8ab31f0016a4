"""`tbhud import JOB_DIR`: a Harbor job directory (written here as Harbor lays it out) into
the history, with the summary of `tbhud run --json`; `compare` against a tbhud run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio

from daemon.serving.process import Daemon
from tests.conftest import ROOT, TBHUD, make_task, run_cli
from tests.test_daemon import unix_peer

LIMIT = 60

STARTED = "2026-11-20T10:00:00.000000Z"


def trial(job: Path, name: str, task: str, *, reward: float | None = None,
          exception: tuple[str, str] | None = None, seconds: int = 30,
          **extra: Any) -> None:
    data: dict[str, Any] = {
        "task_name": task, "trial_name": name, "started_at": STARTED,
        "finished_at": f"2026-11-20T10:00:{seconds:02d}.000000Z",
        "agent_info": {"name": "claude-code", "version": "2.0.1"},
        "agent_result": {"n_input_tokens": 1000, "n_output_tokens": 200,
                         "n_cache_tokens": 50, "cost_usd": 0.25},
        "verifier_result": None if reward is None else {"rewards": {"reward": reward}},
        "exception_info": None if exception is None else {
            "exception_type": exception[0], "exception_message": exception[1],
            "exception_traceback": "Traceback ...", "occurred_at": STARTED},
        **extra}
    (job / name).mkdir(parents=True)
    (job / name / "result.json").write_text(json.dumps(data))


def harbor_job(root: Path) -> Path:
    job = root / "2026-11-20__10-00-00"
    job.mkdir(parents=True)
    (job / "config.json").write_text(json.dumps({
        "job_name": "tb2-sweep", "n_attempts": 1,
        "agents": [{"name": "claude-code", "model_name": "anthropic/claude-sonnet-4-5"}]}))
    (job / "result.json").write_text(json.dumps({
        "id": "0b9e5a4c", "started_at": STARTED, "finished_at": "2026-11-20T10:05:00Z",
        "n_total_trials": 4}))
    trial(job, "hello-file__AbC12", "hello-file", reward=1.0)
    trial(job, "fix-config__dEf34", "fix-config", reward=0.0, seconds=45)
    trial(job, "slow-agent__gHi56", "slow-agent", reward=0.0,
          exception=("AgentTimeoutError", "Agent execution timed out after 3.0 seconds"))
    trial(job, "built-env__jKl78", "built-env",
          exception=("RuntimeError", "Docker compose command failed"))
    return job


def test_a_harbor_job_becomes_a_run_with_the_run_summary(tmp_path: Path, home: Path):
    job = harbor_job(tmp_path)
    result = run_cli(["import", str(job), "--json"], home=home)
    assert result.returncode == 1, result.stderr  # not every task succeeded, as for run
    summary = json.loads(result.stdout)
    assert summary["runId"] == "harbor-0b9e5a4c"
    assert (summary["suiteName"], summary["agent"]) == (
        "tb2-sweep", "harbor:claude-code (anthropic/claude-sonnet-4-5)")
    assert (summary["passed"], summary["failed"], summary["timeout"], summary["error"]) == (
        1, 1, 1, 1)
    assert summary["totalDurationMs"] == 300_000 and summary["status"] == "completed"
    tasks = {t["taskId"]: t for t in summary["tasks"]}
    assert (tasks["hello-file"]["outcome"], tasks["hello-file"]["reward"],
            tasks["hello-file"]["tokens"], tasks["hello-file"]["costUsd"],
            tasks["hello-file"]["durationMs"]) == ("success", 1.0, 1250, 0.25, 30_000)
    assert tasks["fix-config"]["outcome"] == "failure"
    assert tasks["slow-agent"]["outcome"] == "timeout"
    assert "timed out after 3.0 seconds" in tasks["slow-agent"]["error"]
    assert tasks["built-env"]["outcome"] == "error"
    assert tasks["built-env"]["error"] == "RuntimeError: Docker compose command failed"

    history = json.loads(run_cli(["history", "--json"], home=home).stdout)
    assert [h["runId"] for h in history] == ["harbor-0b9e5a4c"]
    # Imported again: replaced, not doubled.
    assert run_cli(["import", str(job), "--json"], home=home).returncode == 1
    assert len(json.loads(run_cli(["history", "--json"], home=home).stdout)) == 1


def test_compare_a_tbhud_run_with_a_harbor_job_of_the_same_tasks(tmp_path: Path, home: Path):
    job = harbor_job(tmp_path / "harbor")
    assert run_cli(["import", str(job)], home=home).returncode == 1
    make_task(tmp_path / "ds", "fix-config", solve="true\n",
              test="echo 1 > /logs/verifier/reward.txt\n")
    run = json.loads(run_cli(["run", str(tmp_path / "ds"), "--json"], home=home).stdout)
    compared = run_cli(["compare", run["runId"], "harbor-0b9e5a4c", "--json"], home=home)
    assert compared.returncode == 0, compared.stderr
    changes = {c["taskId"]: c["change"] for c in json.loads(compared.stdout)["tasks"]}
    assert changes["fix-config"] == "improved"  # failure under Harbor, success here


def test_repeated_tasks_keep_each_trial_and_bad_jobs_exit_2(tmp_path: Path, home: Path):
    job = tmp_path / "attempts"
    trial(job, "hello-file__1", "hello-file", reward=1.0)
    trial(job, "hello-file__2", "hello-file", reward=0.0)
    summary = json.loads(run_cli(["import", str(job), "--json"], home=home).stdout)
    assert sorted(t["taskId"] for t in summary["tasks"]) == ["hello-file__1", "hello-file__2"]

    (tmp_path / "empty").mkdir()
    result = run_cli(["import", str(tmp_path / "empty")], home=home)
    assert result.returncode == 2 and "no trial directory" in result.stderr
    trial(tmp_path / "bad", "t__1", "t", reward=1.0)
    (tmp_path / "bad" / "t__1" / "result.json").write_text('{"verifier_result": '
                                                          '{"rewards": {"reward": "high"}}}')
    result = run_cli(["import", str(tmp_path / "bad")], home=home)
    assert result.returncode == 2
    assert "t__1/result.json: verifier_result.rewards.reward: expected a number" in result.stderr
    assert "Traceback" not in result.stderr


async def test_watch_follows_a_running_job_into_the_daemon(daemon: Daemon, tmp_path: Path,
                                                          home: Path, nursery: trio.Nursery):
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(json.dumps({"job_name": "live", "agents": [
        {"name": "oracle"}]}))
    (job / "result.json").write_text(json.dumps({"id": "live1", "started_at": STARTED,
                                                 "n_total_trials": 2}))
    trial(job, "hello-file__a1", "hello-file", reward=1.0)
    (job / "fix-config__b2").mkdir()  # Harbor is still running this trial
    with trio.fail_after(LIMIT):
        watcher = await unix_peer(nursery, str(daemon.status.socket))
        await watcher.result("subscribe")
        done: dict[str, Any] = {}
        finished = trio.Event()

        async def watch() -> None:
            done["proc"] = await trio.run_process(
                [*TBHUD, "watch", str(job), "--interval", "0.1", "--json"], cwd=ROOT,
                env={**os.environ, "TBHUD_HOME": str(home)}, capture_stdout=True,
                capture_stderr=True, check=False)
            finished.set()

        nursery.start_soon(watch)
        await watcher.wait_for(lambda f: f.get("type") == "tb_task_complete"
                               and f["taskId"] == "hello-file")
        assert not any(f.get("type") == "tb_task_complete" and f["taskId"] == "fix-config"
                       for f in watcher.frames)
        # The second trial ends, then the job.
        (job / "fix-config__b2" / "result.json").write_text(json.dumps({
            "task_name": "fix-config", "started_at": STARTED,
            "finished_at": "2026-11-20T10:00:40Z",
            "verifier_result": {"rewards": {"reward": 1.0}}}))
        (job / "result.json").write_text(json.dumps({
            "id": "live1", "started_at": STARTED, "finished_at": "2026-11-20T10:01:00Z"}))
        await watcher.wait_for(lambda f: f.get("type") == "tb_run_history"
                               and any(r["runId"] == "harbor-live1" for r in f["runs"]))
        await finished.wait()  # it exits once the run is stored
    proc = done["proc"]
    assert proc.returncode == 0, proc.stderr.decode()
    stored = json.loads(proc.stdout)
    assert (stored["runId"], stored["agent"], stored["passed"]) == ("harbor-live1",
                                                                   "harbor:oracle", 2)
    assert sorted(stored["taskIds"]) == ["fix-config", "hello-file"]
    assert stored["totalDurationMs"] == 60_000
