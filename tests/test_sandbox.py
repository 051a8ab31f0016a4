"""Conformance of sandbox providers: what the engine and the agents rely on, checked against
every implementation (today Docker, on the real engine). A new provider is added to
`PROVIDERS` and must pass all of these."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import docker
import pytest
import trio

from daemon.sandbox import Sandbox, SandboxError, SandboxProvider, Stats
from daemon.sandbox.docker import DockerSandboxes, instance_name
from daemon.tasks.loader import load
from daemon.tasks.model import NetworkPolicy, TaskSpec
from tests.conftest import make_task, our_containers

pytestmark = pytest.mark.docker

LIMIT = 60  # seconds any one test may take

# Counts processes other than PID 1 and the counting shell itself (zombies excluded).
COUNT_PROCESSES = r"""
n=0
for d in /proc/[0-9]*; do
  p=${d#/proc/}; [ "$p" = 1 ] && continue; [ "$p" = $$ ] && continue
  read -r line < "$d/stat" 2>/dev/null || continue
  s=${line##*) }; s=${s%% *}; [ "$s" = Z ] || n=$((n+1))
done
echo $n
"""


def _docker(client: docker.DockerClient, home: Path) -> SandboxProvider:
    return DockerSandboxes(client, instance=instance_name(home))


PROVIDERS: dict[str, Callable[[docker.DockerClient, Path], SandboxProvider]] = {
    "docker": _docker,
}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest, docker_client: docker.DockerClient,
             home: Path) -> SandboxProvider:
    return PROVIDERS[request.param](docker_client, home)


@pytest.fixture
def task(tmp_path: Path) -> TaskSpec:
    path = make_task(tmp_path, "conformance", test="echo 1 > /logs/verifier/reward.txt\n",
                     toml="[environment]\ndocker_image = \"tbhud/base:bookworm\"\n"
                          "workdir = \"/work\"\n")
    return load(path).tasks[0]


@pytest.fixture
async def sandbox(provider: SandboxProvider, task: TaskSpec, docker_client: docker.DockerClient,
                  home: Path) -> AsyncIterator[Sandbox]:
    with trio.fail_after(LIMIT):
        image = await provider.prepare_image(task, lambda _line: None, run_id="conformance")
        box = await provider.create(task, image, run_id="conformance")
    try:
        yield box
    finally:
        with trio.fail_after(LIMIT):
            await box.remove()
        assert our_containers(docker_client, home) == []


async def run(sandbox: Sandbox, script: str, **kwargs: object) -> tuple[list[tuple[str, str]],
                                                                         int | None, bool]:
    lines: list[tuple[str, str]] = []
    with trio.fail_after(LIMIT):
        done = await sandbox.exec(["sh", "-c", script],
                                  on_line=lambda s, line: lines.append((s, line)),
                                  **kwargs)  # type: ignore[arg-type]
    return lines, done.exit_code, done.timed_out


async def count_processes(sandbox: Sandbox) -> int:
    lines, code, _ = await run(sandbox, COUNT_PROCESSES, user="0")
    assert code == 0
    return int(lines[-1][1])


async def test_exec_streams_both_streams_and_returns_the_exit_code(sandbox: Sandbox):
    lines, code, timed_out = await run(
        sandbox, 'echo out; echo err >&2; printf "no newline"; pwd; echo "$GREETING"; '
                 "id -u; exit 3", environment={"GREETING": "hello"}, user="65534")
    assert (code, timed_out) == (3, False)
    assert ("stderr", "err") in lines
    stdout = [line for stream, line in lines if stream == "stdout"]
    # The default directory is the task's workdir; a partial last line still arrives.
    assert stdout == ["out", "no newline/work", "hello", "65534"]


async def test_a_long_line_arrives_whole_up_to_max_line(sandbox: Sandbox):
    lines, code, _ = await run(sandbox, "head -c 200000 /dev/zero | tr '\\0' x; echo",
                               max_line=300_000)
    assert code == 0 and [len(line) for _, line in lines] == [200_000]


async def test_exec_time_limit_kills_every_process_it_left(sandbox: Sandbox):
    script = "setsid sh -c 'sleep 300' & nohup sleep 300 >/dev/null 2>&1 & echo started; sleep 300"
    lines, code, timed_out = await run(sandbox, script, timeout=1.5)
    assert (code, timed_out) == (None, True)
    assert lines == [("stdout", "started")]
    assert await count_processes(sandbox) == 0


async def test_kill_all_leaves_only_the_keeper(sandbox: Sandbox):
    started = trio.Event()

    async def agent() -> None:
        await sandbox.exec(["sh", "-c", "setsid sleep 300 & (sleep 300 &) ; echo up; sleep 300"],
                           on_line=lambda _s, _l: started.set())

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            await started.wait()
            assert await count_processes(sandbox) >= 3
            await sandbox.kill_all()
            # Killing ends the exec's stream, so the agent task returns by itself.
    assert await count_processes(sandbox) == 0


async def test_files_in_and_out(sandbox: Sandbox, tmp_path: Path):
    files = {"run.sh": b"echo hi\n", "deep/er/data.txt": b"data", "tool": b"#!/bin/sh\n"}
    with trio.fail_after(LIMIT):
        await sandbox.put_files(files, "/srv/in")
        lines, code, _ = await run(sandbox, "cd /srv/in && stat -c '%a %U %n' run.sh "
                                   "deep/er/data.txt tool")
        assert code == 0
        assert [line for _, line in lines] == ["755 root run.sh", "644 root deep/er/data.txt",
                                               "755 root tool"]
        got = await sandbox.get_dir("/srv/in", tmp_path / "out")
        assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in got) == [
            "in/deep/er/data.txt", "in/run.sh", "in/tool"]
        assert (tmp_path / "out" / "in" / "deep" / "er" / "data.txt").read_bytes() == b"data"
        assert await sandbox.get_dir("/no/such/dir", tmp_path / "none") == []


async def test_get_dir_copies_a_single_file_by_its_name(sandbox: Sandbox, tmp_path: Path):
    # Artifacts name files as well as directories: a file lands in host_dir by its name.
    with trio.fail_after(LIMIT):
        await sandbox.put_files({"report.txt": b"done\n"}, "/srv/single")
        got = await sandbox.get_dir("/srv/single/report.txt", tmp_path / "out")
    assert got == [tmp_path / "out" / "report.txt"]
    assert (tmp_path / "out" / "report.txt").read_bytes() == b"done\n"


async def test_get_dir_never_writes_outside_the_host_dir(sandbox: Sandbox, tmp_path: Path):
    _, code, _ = await run(sandbox, "mkdir -p /srv/evil && ln -s /etc/passwd /srv/evil/link "
                           "&& echo ok > /srv/evil/file", user="0")
    assert code == 0
    with trio.fail_after(LIMIT):
        got = await sandbox.get_dir("/srv/evil", tmp_path / "out")
    # The link is left out, the plain file beside it is copied.
    assert got == [tmp_path / "out" / "evil" / "file"]
    assert sorted(p.name for p in (tmp_path / "out" / "evil").iterdir()) == ["file"]


async def test_stats_are_reported(sandbox: Sandbox):
    seen: list[Stats] = []
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            got_one = trio.Event()

            def on_stats(stats: Stats) -> None:
                seen.append(stats)
                got_one.set()

            nursery.start_soon(sandbox.stats, on_stats)
            await got_one.wait()
            nursery.cancel_scope.cancel()
    assert seen[0].memory_bytes > 0 and seen[0].memory_limit_bytes > 0
    assert seen[0].cpu_percent >= 0


async def interfaces(sandbox: Sandbox) -> list[str]:
    lines, code, _ = await run(sandbox, "ls /sys/class/net")
    assert code == 0
    return sorted(line for _s, line in lines)


async def test_set_network_switches_between_loopback_only_and_the_network(sandbox: Sandbox):
    public = await interfaces(sandbox)
    assert "lo" in public and len(public) > 1  # a public baseline has its interface
    with trio.fail_after(LIMIT):
        await sandbox.set_network(NetworkPolicy("no-network"))
    assert await interfaces(sandbox) == ["lo"]
    # An allowlist of no host denies all egress: loopback only too, and no proxy to name.
    with trio.fail_after(LIMIT):
        await sandbox.set_network(NetworkPolicy("allowlist", ()))
    assert await interfaces(sandbox) == ["lo"]
    assert sandbox.network_env == {}
    with trio.fail_after(LIMIT):
        await sandbox.set_network(NetworkPolicy("public"))
    assert len(await interfaces(sandbox)) == len(public)


async def test_a_no_network_baseline_holds_from_the_start(provider: SandboxProvider,
                                                          task: TaskSpec):
    offline = attrs.evolve(task, environment=attrs.evolve(
        task.environment, network=NetworkPolicy("no-network")))
    with trio.fail_after(LIMIT):
        image = await provider.prepare_image(offline, lambda _line: None, run_id="conformance")
        box = await provider.create(offline, image, run_id="conformance")
    try:
        assert await interfaces(box) == ["lo"]
    finally:
        with trio.fail_after(LIMIT):
            await box.remove()


async def test_a_removed_sandbox_fails_with_a_neutral_error(sandbox: Sandbox):
    with trio.fail_after(LIMIT):
        await sandbox.remove()
        await sandbox.remove()  # twice is fine
        with pytest.raises(SandboxError, match="cannot exec"):
            await sandbox.exec(["true"], on_line=lambda _s, _l: None)
        with pytest.raises(SandboxError, match="cannot copy files"):
            await sandbox.put_files({"a": b"a"}, "/x")


async def test_an_image_that_is_not_there_is_a_neutral_error(provider: SandboxProvider,
                                                             task: TaskSpec):
    missing = attrs.evolve(task, environment=attrs.evolve(
        task.environment, docker_image="tbhud-test/absent:never"))
    with trio.fail_after(LIMIT), pytest.raises(SandboxError, match="tbhud-test/absent:never"):
        await provider.prepare_image(missing, lambda _line: None, run_id="conformance")


async def test_orphans_of_a_dead_owner_are_removed_and_live_ones_kept(
        provider: SandboxProvider, task: TaskSpec, docker_client: docker.DockerClient,
        home: Path):
    with trio.fail_after(LIMIT):
        image = await provider.prepare_image(task, lambda _line: None, run_id="conformance")
        box = await provider.create(task, image, run_id="some-run")
        labels = docker_client.containers.get(box.id).labels
        await box.remove()
        # Same instance label; one owner alive (our parent process), one dead.
        made = [docker_client.containers.create(
                    image, ["sleep", "infinity"],
                    labels={**labels, "tbhud.pid": str(pid), "tbhud.run": run}).id
                for pid, run in ((os.getppid(), "live-run"), (999_999_999, "dead-run"))]
        try:
            assert await provider.remove_orphans() == ["dead-run"]
            assert our_containers(docker_client, home) == [made[0]]
        finally:
            for cid in made:
                with contextlib.suppress(docker.errors.NotFound):  # the orphan is gone
                    docker_client.api.remove_container(cid, force=True)
