"""One task of a run, from setup to teardown: its phases (setup, agent, verification) and
the events that report them. The container is removed on every path out."""

from __future__ import annotations

import time
from typing import IO, TYPE_CHECKING, Any

import trio

from daemon.agents.base import INSTRUCTION_DIR, AgentContext, AgentError, AgentResult, host_env
from daemon.engine.verdict import VERIFIER_LOGS, read_ctrf, read_reward
from daemon.sandbox.docker.env import DockerError
from daemon.tasks.model import DEFAULT_WORKDIR, TaskSpec
from protocol import TaskResult
from protocol.events import (
    ContainerStart,
    ContainerStats,
    ContainerStop,
    OutputSource,
    Phase,
    TBTaskComplete,
    TBTaskOutput,
    TBTaskProgress,
    TBTaskStart,
)

if TYPE_CHECKING:
    from daemon.engine.run import Engine, RunConfig

VERIFICATION_TAIL = 4000  # characters of verifier output carried in tb_task_complete
TEARDOWN_GRACE_SEC = 30  # bound on the shielded clean-up of one task


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class TaskRun:
    """One task from setup to teardown. Holds what its phases share."""

    def __init__(self, engine: Engine, run_id: str, agent: Any, task: TaskSpec, index: int,
                 total: int, config: RunConfig, scope: trio.CancelScope) -> None:
        self.engine, self.run_id, self.agent, self.task = engine, run_id, agent, task
        self.index, self.total, self.config, self.scope = index, total, config, scope
        self.emit = engine.emit
        self.docker = engine.docker
        self.dir = engine.store.task_dir(run_id, task.id)
        self.started = time.monotonic()
        self.phase: Phase = "setup"
        self.turn: int | None = None
        self.container_id: str | None = None
        self.verifier_lines: list[str] = []
        self.logs: dict[str, IO[str]] = {}

    # -- reporting -------------------------------------------------------------------------

    def elapsed_ms(self) -> int:
        return _ms(time.monotonic() - self.started)

    def progress(self, phase: Phase | None = None, turn: int | None = None) -> None:
        self.phase = phase or self.phase
        self.turn = turn if turn is not None else self.turn
        self.emit(TBTaskProgress(run_id=self.run_id, task_id=self.task.id, phase=self.phase,
                                 elapsed_ms=self.elapsed_ms(), current_turn=self.turn))

    def output(self, text: str, source: OutputSource) -> None:
        log = "verifier.log" if source == "verification" else "agent.log"
        if log not in self.logs:
            # Line-buffered: a daemon killed mid-task still leaves the lines so far on disk.
            self.logs[log] = open(self.dir / log, "a", encoding="utf-8", buffering=1)
        self.logs[log].write(text + "\n")
        if source == "verification":
            self.verifier_lines.append(text)
        self.emit(TBTaskOutput(run_id=self.run_id, task_id=self.task.id, text=text,
                               source=source))

    def system(self, text: str) -> None:
        self.output(text, "system")

    # -- the task --------------------------------------------------------------------------

    async def run(self) -> None:
        task = self.task
        self.emit(TBTaskStart(run_id=self.run_id, task_id=task.id, task_name=task.name,
                              category=task.category, difficulty=task.difficulty,  # type: ignore[arg-type]
                              task_index=self.index, total_tasks=self.total))
        self.progress("setup")
        result: TaskResult | None = None
        try:
            with self.scope:
                result = await self._phases()
            if result is None:  # the scope was cancelled: stopped by a user
                result = self._result("error", error="stopped")
        except* (DockerError, AgentError) as group:
            result = self._result("error", error=str(group.exceptions[0]))
        except* Exception as group:  # a crashed step fails its task, never the run
            result = self._result("error", error=f"internal error: {group.exceptions[0]!r}")
        finally:
            with trio.CancelScope(shield=True):
                # Stopped or crashed mid-phase: kill what runs before removing anything.
                await self._teardown(kill_first=result is None or result.error == "stopped")
                if result is None:  # cancelled from outside: the whole run is going down
                    result = self._result("error", error="stopped")
                self._finish(result)
                for log in self.logs.values():
                    log.close()

    async def _phases(self) -> TaskResult:
        task, mult = self.task, self.config.timeout_multiplier
        image = await self.docker.ensure_image(task, self.system, timeout_multiplier=mult)
        workdir = (task.environment.workdir or await self.docker.image_workdir(image)
                   or DEFAULT_WORKDIR)
        self.container_id = await self.docker.create_container(
            image, task.environment, run_id=self.run_id, task_id=task.id, workdir=workdir)
        env = task.environment
        self.emit(ContainerStart(run_id=self.run_id, task_id=task.id,
                                 container_id=self.container_id, image=image, cpus=env.cpus,
                                 memory_mb=env.memory_mb))
        async with trio.open_nursery() as nursery:
            if self.config.container_stats:
                nursery.start_soon(self.docker.stats, self.container_id, self._on_stats)
            result = await self._in_container(workdir, mult)
            nursery.cancel_scope.cancel()
        return result

    async def _in_container(self, workdir: str, mult: float) -> TaskResult:
        failed_setup = await self._setup(workdir)
        if failed_setup is not None:
            return failed_setup
        agent_result, agent_overran = await self._agent_phase(workdir, mult)
        return await self._verification(workdir, mult, agent_result, agent_overran)

    async def _setup(self, workdir: str) -> TaskResult | None:
        """The instruction, a suite task's files and commands; an error result if one fails."""
        task, cid = self.task, self.container_id
        assert cid is not None
        await self.docker.put_files(cid, {"instruction.md": task.instruction.encode()},
                                    INSTRUCTION_DIR)
        if task.setup_files:
            await self.docker.put_files(cid, task.setup_files, workdir)
        for command in task.setup_commands:
            self.system(f"$ {command}")
            code = await self.docker.exec(cid, ["sh", "-c", command], user=task.agent_user,
                                          workdir=workdir, on_line=self._system_line)
            if code != 0:
                return self._result("error", error=f"setup command exited {code}: {command}")
        return None

    async def _agent_phase(self, workdir: str, mult: float) -> tuple[AgentResult, str | None]:
        """Run the agent within its limit. Returns what it reported and, if it overran, why."""
        task, cid = self.task, self.container_id
        assert cid is not None
        self.progress("agent", turn=0)
        limit = (self.config.agent_timeout_sec or task.agent_timeout_sec) * mult
        ctx = AgentContext(
            docker=self.docker, container_id=cid, task=task, run_id=self.run_id,
            workdir=workdir, instruction=task.instruction,
            output=lambda line: self.output(line, "agent"),
            set_turn=lambda turn: self.progress(turn=turn), emit=self.emit,
            host_env=host_env(self.agent.needs))
        result = AgentResult()
        with trio.move_on_after(limit) as clock:
            result = await self.agent.run(ctx)
        if not clock.cancelled_caught:
            if result.note:
                self.system(result.note)
            return result, None
        # Nothing the agent started may run on into verification.
        await self.docker.kill_all(cid)
        self.system(f"agent timed out after {limit:g}s; its processes were killed")
        return ctx.partial_result or result, f"agent timed out after {limit:g}s"

    async def _verification(self, workdir: str, mult: float, agent_result: AgentResult,
                            agent_overran: str | None) -> TaskResult:
        """Run /tests/test.sh and judge: reward, CTRF counts, outcome. Runs after an agent
        timeout too (the outcome stays timeout, the reward is kept)."""
        task, cid = self.task, self.container_id
        assert cid is not None
        self.progress("verification")
        # The agent could have planted /tests or a reward file: start both from nothing.
        await self.docker.exec(cid, ["sh", "-c", f"rm -rf /tests {VERIFIER_LOGS} && "
                                     f"mkdir -p {VERIFIER_LOGS}"], user="0",
                               on_line=self._system_line)
        await self.docker.put_files(cid, task.test_files, "/tests")
        limit = task.verifier_timeout_sec * mult
        exit_code = None
        with trio.move_on_after(limit) as clock:
            exit_code = await self.docker.exec(
                cid, ["bash", "/tests/test.sh"], user=task.verifier_user, workdir=workdir,
                environment=task.verifier_env,
                on_line=lambda _s, line: self.output(line, "verification"))
        verifier_overran = None
        if clock.cancelled_caught:
            await self.docker.kill_all(cid)
            verifier_overran = f"verifier timed out after {limit:g}s"
            self.system(verifier_overran)
        files = await self.docker.get_dir(cid, VERIFIER_LOGS, self.dir)
        reward, reward_error = read_reward(self.dir / "verifier")
        tests_passed, tests_total = read_ctrf(self.dir / "verifier" / "ctrf.json")
        stats = dict(reward=reward, tests_passed=tests_passed, tests_total=tests_total,
                     agent=agent_result)
        overran = agent_overran or verifier_overran
        if overran:
            return self._result("timeout", error=overran, **stats)
        if reward is None:
            listed = ", ".join(sorted(p.name for p in files)) or "nothing"
            return self._result(
                "error", error=f"{reward_error} (test.sh exited {exit_code}; "
                f"{VERIFIER_LOGS} held {listed})", **stats)
        return self._result("success" if reward >= 1 else "failure", **stats)

    def _system_line(self, _stream: str, line: str) -> None:
        self.system(line)

    def _on_stats(self, stats: Any) -> None:
        assert self.container_id is not None
        self.emit(ContainerStats(run_id=self.run_id, task_id=self.task.id,
                                 container_id=self.container_id, cpu_percent=stats.cpu_percent,
                                 memory_bytes=stats.memory_bytes,
                                 memory_limit_bytes=stats.memory_limit_bytes))

    def _result(self, outcome: str, *, error: str | None = None, reward: float | None = None,
                tests_passed: int | None = None, tests_total: int | None = None,
                agent: AgentResult | None = None) -> TaskResult:
        agent = agent or AgentResult()
        if outcome != "success" and agent.note:
            # What the agent said went wrong (e.g. "claude-code: error_max_turns") stays
            # with the result, next to any reason of our own.
            error = agent.note if error is None else f"{error}; {agent.note}"
        return TaskResult(task_id=self.task.id, outcome=outcome,  # type: ignore[arg-type]
                          duration_ms=self.elapsed_ms(), tests_passed=tests_passed,
                          tests_total=tests_total, reward=reward, turns=agent.turns,
                          tokens=agent.tokens, cost_usd=agent.cost_usd, error=error)

    async def _teardown(self, *, kill_first: bool) -> None:
        """Remove the container (killing what runs in it first when asked). Runs shielded,
        bounded in time."""
        cid = self.container_id
        if cid is not None:
            with trio.move_on_after(TEARDOWN_GRACE_SEC):
                if kill_first:
                    try:
                        await self.docker.kill_all(cid)
                    except Exception:
                        pass  # the forced removal below kills whatever is left
                await self.docker.remove(cid)
                self.emit(ContainerStop(run_id=self.run_id, task_id=self.task.id,
                                        container_id=cid))

    def _finish(self, result: TaskResult) -> None:
        if result.error:
            self.system(f"{result.outcome}: {result.error}")
        self.engine.store.record_task(self.run_id, result)
        tail = "\n".join(self.verifier_lines)[-VERIFICATION_TAIL:] or None
        self.emit(TBTaskComplete(
            run_id=self.run_id, task_id=self.task.id, outcome=result.outcome,
            duration_ms=result.duration_ms, turns=result.turns or 0,
            tokens=result.tokens or 0, verification_output=tail,
            tests_passed=result.tests_passed, tests_total=result.tests_total,
            reward=result.reward, cost_usd=result.cost_usd, error=result.error))
