"""What the loader produces and the engine consumes: tasks and suites, source format erased.

A TB2 task directory, a dataset and both suite JSON shapes all become a `Suite` of `TaskSpec`s.
Suite-style verification (`script`, `test`, `output`, ...) is turned into a generated
`tests/test.sh` at load time, so the engine has one verifier path for everything.
"""

from __future__ import annotations

from pathlib import Path

import attrs

# The project's own base image, built from Debian packages by `daemon.sandbox.docker.baseimage`.
BASE_IMAGE = "tbhud/base:bookworm"

DEFAULT_AGENT_TIMEOUT_SEC = 600.0  # Harbor leaves it unset; we never run unbounded.
DEFAULT_VERIFIER_TIMEOUT_SEC = 600.0  # Harbor's default.
DEFAULT_BUILD_TIMEOUT_SEC = 600.0  # Harbor's default.
DEFAULT_WORKDIR = "/app"  # used when neither the task nor the image names one


@attrs.frozen
class Healthcheck:
    """`[environment.healthcheck]`: Docker's HEALTHCHECK, run by the engine before the agent.
    Defaults are Harbor's."""

    command: str  # a shell command (bash -c); exit 0 means healthy
    interval_sec: float = 5.0  # between tries, once the start period is over
    timeout_sec: float = 30.0  # per try; a try that runs longer failed
    start_period_sec: float = 0.0  # failures within it do not count
    start_interval_sec: float = 5.0  # between tries during the start period
    retries: int = 3  # consecutive counted failures that make it fail


@attrs.frozen
class Environment:
    """How the task's container is made: `[environment]` of task.toml."""

    # Exactly one of these two: a prebuilt image, or a directory holding a Dockerfile.
    docker_image: str | None = None
    build_context: Path | None = None
    build_timeout_sec: float = DEFAULT_BUILD_TIMEOUT_SEC
    cpus: float = 1.0
    memory_mb: int = 2048
    storage_mb: int = 10240
    # "public" or "none". Harbor's "allowlist" has no Docker equivalent; it runs as "none".
    network: str = "public"
    workdir: str | None = None
    # Environment variables for the container, ${VAR} templates already resolved.
    env: dict[str, str] = attrs.field(factory=dict)
    # Harbor's `allowed_hosts` (network_mode = "allowlist"); kept for reports, not enforced.
    allowed_hosts: tuple[str, ...] = ()
    healthcheck: Healthcheck | None = None


@attrs.frozen
class SeparateVerifier:
    """Harbor's `environment_mode = "separate"`: the verifier runs in a sandbox of its own,
    made from `environment`, and sees of the agent's sandbox only the files at `inputs`."""

    environment: Environment
    # tests/ uploaded to /tests (a fresh copy of the agent's environment), or not: a
    # verifier image of its own (tests/Dockerfile, a docker_image) holds /tests itself.
    upload_tests: bool
    # Absolute paths copied from the agent's sandbox to the same paths in the verifier's:
    # /logs/artifacts and the task's `artifacts`.
    inputs: tuple[str, ...] = ()


@attrs.frozen
class TaskSpec:
    id: str
    name: str
    category: str = "uncategorized"
    difficulty: str = "medium"
    tags: tuple[str, ...] = ()
    instruction: str = ""
    environment: Environment = attrs.field(factory=Environment)
    agent_timeout_sec: float = DEFAULT_AGENT_TIMEOUT_SEC
    agent_user: str | None = None
    verifier_timeout_sec: float = DEFAULT_VERIFIER_TIMEOUT_SEC
    verifier_user: str | None = None
    verifier_env: dict[str, str] = attrs.field(factory=dict)
    max_turns: int | None = None
    # Files copied to /tests after the agent phase, by relative path; must hold "test.sh".
    test_files: dict[str, bytes] = attrs.field(factory=dict)
    # solution/solve.sh (and its siblings) for the oracle agent, by relative path; may be empty.
    solution_files: dict[str, bytes] = attrs.field(factory=dict)
    # Suite tasks: files written under the workdir and shell commands run there during setup.
    setup_files: dict[str, bytes] = attrs.field(factory=dict)
    setup_commands: tuple[str, ...] = ()
    # Where the task came from (a task directory or a suite file), for messages.
    source: str = ""
    # `[solution].env` for the oracle agent, ${VAR} templates already resolved.
    solution_env: dict[str, str] = attrs.field(factory=dict)
    # `[metadata]` author_name / author_email, for display.
    author_name: str | None = None
    author_email: str | None = None
    # Why the task could not be loaded (file, field, what was expected): in a dataset such a
    # task is kept, and runs as an `error` result with this text, so the others still run.
    load_error: str | None = None
    # One line per task.toml key tbhud does not act on, shown at the start of each trial and
    # kept with its result: "task.toml: environment.mcp_servers: not supported by tbhud; ..."
    warnings: tuple[str, ...] = ()
    verifier_environment: SeparateVerifier | None = None  # None: verified in the agent's


@attrs.frozen
class Suite:
    name: str
    version: str
    description: str
    tasks: tuple[TaskSpec, ...]
    path: str

    def select(self, task_ids: list[str] | None) -> list[TaskSpec]:
        """The tasks named (in suite order), or all; an unknown id is a LoadError."""
        if not task_ids:
            return list(self.tasks)
        check_known(self.path, task_ids, {t.id for t in self.tasks})
        wanted = set(task_ids)
        return [t for t in self.tasks if t.id in wanted]


def check_known(path: str, task_ids: list[str], known: set[str]) -> None:
    """A LoadError naming the ids in `task_ids` that are not `known` (the suite's ids)."""
    unknown = [i for i in task_ids if i not in known]
    if unknown:
        # A suite of 45k tasks must not make a 349 KB message: a few names of each.
        raise LoadError(path, "tasks", f"unknown task id(s) {_few(unknown)}; "
                        f"this suite has {len(known)}: {_few(sorted(known))}")


def _few(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class LoadError(ValueError):
    """Bad input: names the file, the field (or line) and what was expected."""

    def __init__(self, file: str | Path, field: str | None, message: str) -> None:
        self.file = str(file)
        self.field = field
        self.message = message
        where = f"{self.file}: {field}: " if field else f"{self.file}: "
        super().__init__(where + message)
