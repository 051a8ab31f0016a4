"""The base image (built from Debian packages) and the example tasks and suites that run on it.

Everything here uses the real Docker engine. Without one the tests fail, never skip: a green
run must mean the examples really work.

Each example is checked the way the engine will run it, by hand with the SDK: solution, then
tests, in a throwaway container; and the same without the solution (the nop agent), which must
score 0 — the tests check work, not luck.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
from pathlib import Path

import docker
import docker.errors
import pytest

from daemon.sandbox.docker import baseimage
from daemon.sandbox.docker.baseimage import BaseImageError, ensure_base_image
from daemon.tasks.model import BASE_IMAGE

pytestmark = pytest.mark.docker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TASKS_DIR = EXAMPLES / "tasks"
SUITES_DIR = EXAMPLES  # suite JSON files sit beside tasks/, which source_path points into
TASK_NAMES = sorted(p.name for p in TASKS_DIR.iterdir() if (p / "task.toml").exists())
REQUIRED_TASKS = {"hello-file", "fix-config", "slow-agent", "ctrf-report", "built-env",
                  "prebuilt-image"}
TEST_LABELS = {"tbhud.test": "1"}


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need a running Docker engine and are never skipped: {exc}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def base_image(client) -> str:
    # Builds it (~1 min) on a machine that doesn't have it yet.
    return ensure_base_image(client)


@pytest.fixture(scope="module")
def task_image(client, base_image):
    """task name -> image to run it on; tasks with environment/Dockerfile are built once."""
    built: dict[str, str] = {}

    def image_for(name: str) -> str:
        task_dir = TASKS_DIR / name
        docker_image = _task_toml(name).get("environment", {}).get("docker_image")
        if docker_image:
            return docker_image
        if name not in built:
            tag = f"tbhud-test/{name}:test"
            client.images.build(path=str(task_dir / "environment"), tag=tag, rm=True,
                                forcerm=True, labels=TEST_LABELS)
            built[name] = tag
        return built[name]

    yield image_for
    for tag in built.values():
        client.images.remove(tag, force=True)


# --- base image -------------------------------------------------------------------------------

def test_base_image_exists(client, base_image):
    assert base_image == BASE_IMAGE
    image = client.images.get(BASE_IMAGE)
    assert image.attrs["Config"]["Cmd"] == ["bash"]
    assert any(e.startswith("PATH=") for e in image.attrs["Config"]["Env"])


def test_second_call_is_a_cache_hit(client, base_image):
    before = client.images.get(BASE_IMAGE).id
    messages: list[str] = []
    started = time.monotonic()
    assert ensure_base_image(client, log=messages.append) == BASE_IMAGE
    assert time.monotonic() - started < 5, "a cached base image must not be rebuilt"
    assert messages == []
    assert client.images.get(BASE_IMAGE).id == before


@pytest.mark.parametrize("entry", [["daemon", "base-image"], ["daemon.sandbox.docker.baseimage"]])
def test_cli_reports_the_cached_image(base_image, entry: list[str]):
    proc = subprocess.run([sys.executable, "-m", *entry],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == BASE_IMAGE


def test_container_from_base_image_runs_bash(client, base_image):
    container = client.containers.run(base_image, ["bash", "-c", "echo ok"], detach=True,
                                      labels=TEST_LABELS)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert container.logs() == b"ok\n"
    finally:
        container.remove(force=True)


def test_base_image_has_the_tools_tests_use(client, base_image):
    tools = "bash sh sed grep awk diff cmp ps pkill timeout tar gzip md5sum"
    code, out = _run_once(client, base_image, f"for t in {tools}; do command -v $t; done")
    assert code == 0, out
    assert len(out.split()) == len(tools.split()), out


def test_concurrent_callers_build_once(client, base_image, monkeypatch):
    """Two threads asking for a missing image: the file lock lets only one of them build."""
    name = "tbhud-test/base-lock:test"
    calls: list[str] = []

    def fake_build(client, image, *, log, mirror):
        calls.append(image)
        time.sleep(1)  # long enough for the other caller to reach the lock
        client.images.get(BASE_IMAGE).tag(*image.split(":"))

    monkeypatch.setattr(baseimage, "_build", fake_build)
    errors: list[BaseException] = []

    def call():
        try:
            ensure_base_image(client, name, log=lambda m: None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert calls == [name]
        client.images.get(name)
    finally:
        try:
            client.images.remove(name)
        except docker.errors.ImageNotFound:
            pass


def test_missing_debootstrap_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(baseimage.shutil, "which", lambda name: None)
    monkeypatch.setattr(baseimage.os.path, "exists", lambda path: False)
    with pytest.raises(BaseImageError, match="apt-get install debootstrap"):
        baseimage._check_prerequisites()


def test_not_root_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(baseimage.os, "geteuid", lambda: 1000)
    with pytest.raises(BaseImageError, match="root"):
        baseimage._check_prerequisites()


# --- example tasks: shape ---------------------------------------------------------------------

def test_required_example_tasks_exist():
    assert REQUIRED_TASKS <= set(TASK_NAMES)
    difficulties = {_task_toml(n)["metadata"]["difficulty"] for n in TASK_NAMES}
    assert difficulties == {"easy", "medium", "hard"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_example_task_layout(name):
    task_dir = TASKS_DIR / name
    for rel in ("task.toml", "instruction.md", "tests/test.sh", "solution/solve.sh"):
        assert (task_dir / rel).is_file(), f"{name}: missing {rel}"
    for rel in ("tests/test.sh", "solution/solve.sh"):
        assert os.access(task_dir / rel, os.X_OK), f"{name}: {rel} is not executable"
    assert (task_dir / "instruction.md").read_text().strip()

    toml = _task_toml(name)
    assert toml["version"] == "1.0"
    for key in ("difficulty", "category", "tags", "author_name"):
        assert key in toml["metadata"], f"{name}: [metadata] {key}"
    assert toml["agent"]["timeout_sec"] > 0
    assert toml["verifier"]["timeout_sec"] > 0
    env = toml["environment"]
    has_dockerfile = (task_dir / "environment" / "Dockerfile").is_file()
    assert bool(env.get("docker_image")) != has_dockerfile, \
        f"{name}: needs exactly one of docker_image and environment/Dockerfile"
    if has_dockerfile:
        dockerfile = (task_dir / "environment" / "Dockerfile").read_text()
        assert f"FROM {BASE_IMAGE}" in dockerfile
        assert "apt-get" not in dockerfile, "task images must build offline"

    test_sh = (task_dir / "tests" / "test.sh").read_text()
    assert "mkdir -p /logs/verifier" in test_sh
    assert "/logs/verifier/reward.txt" in test_sh


def test_specific_task_settings():
    assert _task_toml("hello-file")["environment"]["docker_image"] == BASE_IMAGE
    prebuilt = _task_toml("prebuilt-image")["environment"]
    assert (prebuilt["docker_image"], prebuilt["cpus"], prebuilt["memory_mb"]) == \
        (BASE_IMAGE, 1, 256)
    assert _task_toml("slow-agent")["agent"]["timeout_sec"] <= 5
    assert "docker_image" not in _task_toml("built-env")["environment"]


# --- example tasks: run them ------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in TASK_NAMES if n != "slow-agent"])
def test_oracle_solves_example_task(client, task_image, name):
    with _task_container(client, task_image(name), name) as container:
        code, out = _exec(container, "timeout 60 bash /solution/solve.sh")
        assert code == 0, f"{name}: solve.sh failed:\n{out}"
        reward, out = _verify(container)
        assert reward == "1", f"{name}: reward {reward!r} after the oracle:\n{out}"
        if name == "ctrf-report":
            ctrf = json.loads(_read(container, "/logs/verifier/ctrf.json"))["results"]
            assert ctrf["tool"]["name"] == "bash"
            assert (ctrf["summary"]["tests"], ctrf["summary"]["passed"],
                    ctrf["summary"]["failed"]) == (3, 3, 0)
            assert [t["status"] for t in ctrf["tests"]] == ["passed"] * 3


@pytest.mark.parametrize("name", TASK_NAMES)
def test_example_task_fails_without_solution(client, task_image, name):
    """The nop agent: nothing done, so every task's tests must give reward 0."""
    with _task_container(client, task_image(name), name) as container:
        reward, out = _verify(container)
        assert reward == "0", f"{name}: reward {reward!r} with no work done:\n{out}"
        if name == "ctrf-report":
            ctrf = json.loads(_read(container, "/logs/verifier/ctrf.json"))["results"]
            assert (ctrf["summary"]["tests"], ctrf["summary"]["failed"]) == (3, 3)


# --- example suites ---------------------------------------------------------------------------

def _suite_tasks():
    for path in sorted(SUITES_DIR.glob("*.json")):
        for task in json.loads(path.read_text())["tasks"]:
            yield pytest.param(path, task, id=f"{path.stem}/{task['id']}")


def test_suites_have_both_shapes():
    files = json.loads((SUITES_DIR / "files-shape.json").read_text())
    commands = json.loads((SUITES_DIR / "commands-shape.json").read_text())
    for suite in (files, commands):
        assert suite["image"] == BASE_IMAGE
        assert {"name", "version", "description"} <= suite.keys()
        assert 2 <= len(suite["tasks"]) <= 3
        assert all(t.get("solution") for t in suite["tasks"])
    for task in files["tasks"]:
        assert {"id", "name", "category", "difficulty", "prompt"} <= task.keys()
        assert task["setup"]["files"]
        assert task["verification"]["type"] == "script"
    types = {t["verification"]["type"] for t in commands["tasks"]}
    assert {"test", "output"} <= types
    sourced = [t for t in commands["tasks"] if "source_path" in t]
    assert [t["source_path"] for t in sourced] == ["tasks/hello-file"]
    assert (SUITES_DIR / sourced[0]["source_path"] / "task.toml").is_file()


@pytest.mark.parametrize(("suite_path", "task"), list(_suite_tasks()))
def test_suite_task_solution_passes_and_nop_fails(client, base_image, suite_path, task):
    image = json.loads(suite_path.read_text())["image"]
    for solve in (True, False):
        with _task_container(client, image, task["id"], copy_task_dirs=False) as container:
            _suite_setup(container, task)
            if solve:
                code, out = _exec(container, task["solution"])
                assert code == 0, f"solution failed:\n{out}"
            passed, out = _suite_verify(container, task["verification"])
            assert passed == solve, f"solution={solve}: verification passed={passed}:\n{out}"


def _suite_setup(container, task) -> None:
    setup = task.get("setup")
    if isinstance(setup, dict):  # shape (a): files under the workdir
        _put_files(container, "/app", {k: v.encode() for k, v in setup["files"].items()})
    for command in setup if isinstance(setup, list) else []:  # shape (b): commands
        code, out = _exec(container, command, shell="sh")
        assert code == 0, f"setup command {command!r} failed:\n{out}"


def _suite_verify(container, verification) -> tuple[bool, str]:
    """The suite verification semantics tbhud implements (and the HUD had); run with plain sh."""
    kind = verification["type"]
    if kind == "script":
        _put_files(container, "/tmp", {"verify.sh": verification["script"].encode()})
        code, out = _exec(container, "sh /tmp/verify.sh", shell="sh")
        return code == 0, out
    if kind == "output":
        code, out = _exec(container, verification["command"], shell="sh", stderr=False)
        return out.strip() == verification["expected"].strip(), out
    code, out = _exec(container, verification.get("command") or verification["script"],
                      shell="sh")
    return code == 0, out


# --- helpers ----------------------------------------------------------------------------------

def _task_toml(name: str) -> dict:
    with open(TASKS_DIR / name / "task.toml", "rb") as f:
        return tomllib.load(f)


@contextlib.contextmanager
def _task_container(client, image: str, name: str, *, copy_task_dirs: bool = True):
    """A labelled throwaway container with /app (and the task's /tests and /solution), always
    removed. Limits come from task.toml, as the engine applies them."""
    limits = {}
    if copy_task_dirs:
        env = _task_toml(name).get("environment", {})
        limits = {"nano_cpus": int(env.get("cpus", 1) * 1e9),
                  "mem_limit": f"{env.get('memory_mb', 2048)}m"}
    # working_dir makes Docker create /app, as the engine does for the task's workdir.
    container = client.containers.run(image, ["sleep", "infinity"], detach=True,
                                      working_dir="/app", labels=TEST_LABELS,
                                      network_mode="none", **limits)
    try:
        if copy_task_dirs:
            for sub in ("tests", "solution"):
                _put_dir(container, TASKS_DIR / name / sub, f"/{sub}")
        yield container
    finally:
        container.remove(force=True)


def _exec(container, script: str, *, shell: str = "bash", stderr: bool = True):
    code, out = container.exec_run([shell, "-c", script], workdir="/app", stderr=stderr)
    return code, out.decode(errors="replace")


def _verify(container) -> tuple[str, str]:
    """Run /tests/test.sh as the engine does; the reward it wrote, and its output."""
    code, out = _exec(container, "timeout 60 bash /tests/test.sh")
    assert code != 124, f"test.sh timed out:\n{out}"
    return _read(container, "/logs/verifier/reward.txt").strip(), out


def _read(container, path: str) -> str:
    code, out = container.exec_run(["cat", path])
    assert code == 0, f"cannot read {path}: {out.decode(errors='replace')}"
    return out.decode()


def _run_once(client, image: str, script: str) -> tuple[int, str]:
    container = client.containers.run(image, ["bash", "-c", script], detach=True,
                                      labels=TEST_LABELS)
    try:
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode()
    finally:
        container.remove(force=True)


def _put_dir(container, src: Path, dest: str) -> None:
    files = {str(p.relative_to(src)): p for p in sorted(src.rglob("*")) if p.is_file()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, path in files.items():
            tar.add(path, arcname=f"{dest.strip('/')}/{rel}")  # keeps the executable bits
    assert container.put_archive("/", buf.getvalue())


def _put_files(container, dest: str, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{dest.strip('/')}/{rel}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    assert container.put_archive("/", buf.getvalue())
