"""The Docker side of a task, driven from trio.

The docker SDK blocks, so every call runs in a worker thread behind a CapacityLimiter. Streams
(exec output, build output, stats) are read by a thread that hands chunks to trio through a
memory channel. A stream that must end early is ended by acting on Docker — killing the
processes in the container or removing it — after which the reading thread finishes by itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import docker
import docker.errors
import trio

from daemon.tasks.model import BASE_IMAGE, Environment, TaskSpec

LABEL = "tbhud"  # every container we make carries tbhud=<instance>: one per data directory
LABEL_PID = "tbhud.pid"  # the process that owns it: a container whose owner died is an orphan
LABEL_RUN = "tbhud.run"
LABEL_TASK = "tbhud.task"
KEEPER = ["sleep", "infinity"]  # PID 1: init of the PID namespace, immune to `kill -9 -1`
PIDS_LIMIT = 1024
MAX_LINE = 64 * 1024  # by default a "line" longer than this is passed on in pieces

# Kill every process in the container except PID 1 and this shell, until none is left alive.
# `kill -9 -1` from inside reaches processes that escaped with setsid/nohup/double fork;
# ending the `docker exec` client would leave them running.
KILL_ALL = r"""
i=0
while [ $i -lt 50 ]; do
  kill -9 -1 2>/dev/null
  alive=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = 1 ] && continue
    [ "$p" = $$ ] && continue
    read -r line < "$d/stat" 2>/dev/null || continue
    s=${line##*) }; s=${s%% *}
    [ "$s" = Z ] || [ "$s" = X ] || alive=1
  done
  [ $alive = 0 ] && exit 0
  i=$((i+1))
done
exit 1
"""


class DockerError(RuntimeError):
    """An infrastructure failure; the task's outcome becomes `error` with this text."""


class BuildTimeout(DockerError):
    pass


@attrs.frozen
class Stats:
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int


def connect() -> docker.DockerClient:
    """The local engine, or a DockerError saying how to get one."""
    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerError(
            f"no Docker engine answers ({exc}); start one (e.g. `dockerd &` as root, "
            "or run `bash .ci/setup`)"
        ) from exc
    return client


def context_hash(root: Path) -> str:
    """Content hash of a build context: relative paths, modes and bytes of every file."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def tar_of(files: dict[str, bytes], prefix: str) -> bytes:
    """A tar holding `files` under `prefix/` (created as needed), root-owned."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = {prefix.strip("/")} | {
            f"{prefix.strip('/')}/{parent}" for rel in files for parent in _parents(rel)}
        for d in sorted(x for x in dirs if x):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(info)
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{prefix.strip('/')}/{rel}".lstrip("/"))
            info.size, info.mtime = len(data), int(time.time())
            info.mode = 0o755 if rel.endswith(".sh") or data.startswith(b"#!") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _parents(rel: str) -> Iterator[str]:
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def _image_name(task_id: str, digest: str) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", task_id.lower()).strip("-.") or "task"
    return f"tbhud-env/{slug}:{digest[:16]}"


class LineSplitter:
    """Bytes in, whole decoded lines out (a partial line waits for its end)."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.pending = b""
        self.max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        while len(self.pending) > self.max_line:
            lines.append(self.pending[:self.max_line])
            self.pending = self.pending[self.max_line:]
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self.pending = self.pending, b""
        return [rest.decode("utf-8", "replace")] if rest else []


class DockerEnv:
    def __init__(self, client: docker.DockerClient | None = None, *, instance: str = "default",
                 max_threads: int = 8) -> None:
        self.client = client or connect()
        self.instance = instance
        self.api_limiter = trio.CapacityLimiter(max_threads)
        # Stream readers live as long as their stream; they get their own, larger pool so that
        # long agent execs never starve short API calls.
        self.stream_limiter = trio.CapacityLimiter(256)
        self.build_locks: dict[str, trio.Lock] = {}

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs),
                                             limiter=self.api_limiter)

    async def _pump(self, produce: Callable[[], Iterator[Any]],
                    consume: Callable[[Any], None]) -> None:
        """Run a blocking iterator in a thread, handing each item to `consume` in trio.

        Cancelling abandons the thread; it ends when Docker ends the stream (the caller kills
        the processes or removes the container), and stops at once if nobody reads any more.
        """
        send, recv = trio.open_memory_channel[Any](64)
        token = trio.lowlevel.current_trio_token()

        def reader() -> None:
            try:
                for item in produce():
                    trio.from_thread.run(send.send, item, trio_token=token)
            except (trio.BrokenResourceError, trio.Cancelled, trio.RunFinishedError):
                return  # the trio side stopped listening
            finally:
                try:
                    trio.from_thread.run_sync(send.close, trio_token=token)
                except trio.RunFinishedError:
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(trio.to_thread.run_sync, reader, abandon_on_cancel=True,
                                       limiter=self.stream_limiter))
            with recv:
                async for item in recv:
                    consume(item)

    # -- images ----------------------------------------------------------------------------

    async def image_exists(self, name: str) -> bool:
        try:
            await self.call(self.client.images.get, name)
            return True
        except docker.errors.ImageNotFound:
            return False

    async def ensure_base_image(self, log: Callable[[str], None]) -> None:
        from daemon.sandbox.docker.baseimage import BaseImageError, ensure_base_image

        if not await self.image_exists(BASE_IMAGE):
            log(f"building the base image {BASE_IMAGE} from Debian packages (once)")
            token = trio.lowlevel.current_trio_token()
            try:
                await self.call(ensure_base_image, self.client,
                                log=lambda m: trio.from_thread.run_sync(log, m, trio_token=token))
            except BaseImageError as exc:
                raise DockerError(str(exc)) from exc

    async def ensure_image(self, task: TaskSpec, log: Callable[[str], None], *,
                           timeout_multiplier: float = 1.0) -> str:
        """The image to run `task` in: its docker_image, or its environment/ built (cached)
        within build_timeout_sec x timeout_multiplier."""
        env = task.environment
        if env.docker_image:
            if env.docker_image == BASE_IMAGE:
                await self.ensure_base_image(log)
            elif not await self.image_exists(env.docker_image):
                raise DockerError(
                    f"image {env.docker_image} is not on this engine; build or load it first "
                    "(tbhud does not pull)")
            return env.docker_image
        assert env.build_context is not None
        context = env.build_context
        name = _image_name(task.id, await trio.to_thread.run_sync(context_hash, context))
        lock = self.build_locks.setdefault(name, trio.Lock())
        async with lock:  # two tasks with one environment build it once
            if await self.image_exists(name):
                log(f"image {name} (cached)")
                return name
            dockerfile = (context / "Dockerfile").read_text(errors="replace")
            if BASE_IMAGE in dockerfile:
                await self.ensure_base_image(log)
            log(f"building {name} from {context}")
            await self._build(context, name, env.build_timeout_sec * timeout_multiplier, log)
        return name

    async def _build(self, context: Path, tag: str, limit_sec: float,
                     log: Callable[[str], None]) -> None:
        # A client of its own whose HTTP responses we keep (a requests response hook), so
        # that a build past its time, or stopped, can be hung up on: the engine cancels a
        # build whose client went away. Closing the client alone would not do it, since the
        # connection in use is not in its pool.
        client = docker.from_env(timeout=int(limit_sec) + 60).api
        responses: list[Any] = []
        client.hooks["response"].append(lambda r, *_a, **_k: responses.append(r))
        errors: list[str] = []
        finished = False

        def produce() -> Iterator[dict[str, Any]]:
            yield from client.build(path=str(context), tag=tag, rm=True, forcerm=True,
                                    decode=True, pull=False)

        def consume(chunk: dict[str, Any]) -> None:
            if "stream" in chunk:
                for line in chunk["stream"].splitlines():
                    if line.strip():
                        log(line)
            if "error" in chunk:
                errors.append(chunk["error"].strip())

        try:
            with trio.fail_after(limit_sec):
                await self._pump(produce, consume)
            finished = True
        except trio.TooSlowError:
            raise BuildTimeout(f"image build exceeded its {limit_sec:g}s limit "
                               "(build_timeout_sec x timeout multiplier)") from None
        except docker.errors.DockerException as exc:
            raise DockerError(f"image build failed: {exc}") from exc
        finally:
            if not finished:
                for response in responses:
                    _hang_up(response)
            client.close()
        if errors:
            raise DockerError(f"image build failed: {errors[-1]}")

    # -- containers ------------------------------------------------------------------------

    async def create_container(self, image: str, env: Environment, *, run_id: str,
                               task_id: str, workdir: str) -> str:
        """Create and start the task's container; returns its id."""
        kwargs: dict[str, Any] = dict(
            command=KEEPER,
            labels={LABEL: self.instance, LABEL_PID: str(os.getpid()), LABEL_RUN: run_id,
                    LABEL_TASK: task_id},
            working_dir=workdir,
            environment=env.env,
            nano_cpus=int(env.cpus * 1e9),
            mem_limit=f"{env.memory_mb}m",
            memswap_limit=f"{env.memory_mb}m",  # no swap beyond the limit
            pids_limit=PIDS_LIMIT,
            security_opt=["no-new-privileges"],
            privileged=False,
            detach=True,
        )
        if env.network == "none":
            kwargs["network_mode"] = "none"
        try:
            container = await self.call(self.client.containers.create, image, **kwargs)
        except docker.errors.DockerException as exc:
            raise DockerError(f"cannot create the container: {exc}") from exc
        try:
            await self.call(container.start)
        except docker.errors.DockerException as exc:
            await self.remove(container.id)
            raise DockerError(f"cannot start the container: {exc}") from exc
        return container.id

    async def image_workdir(self, image: str) -> str | None:
        img = await self.call(self.client.images.get, image)
        return (img.attrs.get("Config") or {}).get("WorkingDir") or None

    async def remove(self, container_id: str) -> None:
        """Remove the container whatever state it is in. Safe to call twice."""
        try:
            await self.call(self.client.api.remove_container, container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if "already in progress" not in str(exc):
                raise

    def remove_orphans_sync(self) -> list[str]:
        """Remove our instance's containers whose owning process is gone (a daemon or a
        `tbhud run` that was killed). Returns the run ids they belonged to."""
        runs = []
        mine = {"label": f"{LABEL}={self.instance}"}
        for c in self.client.containers.list(all=True, filters=mine):
            owner = c.labels.get(LABEL_PID, "")
            if owner.isdigit() and int(owner) != os.getpid() and _alive(int(owner)):
                continue
            c.remove(force=True, v=True)
            runs.append(c.labels.get(LABEL_RUN, ""))
        return runs

    async def exec(self, container_id: str, cmd: list[str], *,
                   on_line: Callable[[str, str], None], user: str | None = None,
                   workdir: str | None = None, environment: dict[str, str] | None = None,
                   max_line: int = MAX_LINE) -> int:
        """Run `cmd` in the container, `on_line(stream, line)` for each line ("stdout" or
        "stderr"); returns its exit code. Cancelling does NOT stop the processes: the caller
        must `kill_all` (that is what ends the stream and the reading thread)."""
        api = self.client.api
        try:
            exec_id = (await self.call(api.exec_create, container_id, cmd, stdout=True,
                                       stderr=True, user=user or "", workdir=workdir,
                                       environment=environment))["Id"]
        except docker.errors.DockerException as exc:
            raise DockerError(f"cannot exec in the container: {exc}") from exc
        splitters = {"stdout": LineSplitter(max_line), "stderr": LineSplitter(max_line)}

        def produce() -> Iterator[tuple[str, bytes]]:
            for out, err in api.exec_start(exec_id, stream=True, demux=True):
                if out:
                    yield "stdout", out
                if err:
                    yield "stderr", err

        def consume(item: tuple[str, bytes]) -> None:
            stream, data = item
            for line in splitters[stream].feed(data):
                on_line(stream, line)

        await self._pump(produce, consume)
        for stream, splitter in splitters.items():
            for line in splitter.flush():
                on_line(stream, line)
        info = await self.call(api.exec_inspect, exec_id)
        return int(info.get("ExitCode") or 0)

    async def kill_all(self, container_id: str) -> None:
        """Kill every process in the container but its keeper (PID 1)."""
        api = self.client.api
        try:
            exec_id = (await self.call(api.exec_create, container_id, ["sh", "-c", KILL_ALL],
                                       user="0"))["Id"]
            await self.call(api.exec_start, exec_id)
            code = (await self.call(api.exec_inspect, exec_id)).get("ExitCode")
        except docker.errors.DockerException:
            code = None
        if code != 0:
            # No shell in the image, or something would not die: restarting the container
            # kills every process in it and keeps its filesystem.
            await self.call(api.restart, container_id, timeout=0)

    async def put_files(self, container_id: str, files: dict[str, bytes], dest: str) -> None:
        """Copy `files` (relative path -> bytes) into the directory `dest` (created)."""
        try:
            await self.call(self.client.api.put_archive, container_id, "/", tar_of(files, dest))
        except docker.errors.DockerException as exc:
            raise DockerError(f"cannot copy files to {dest}: {exc}") from exc

    async def get_dir(self, container_id: str, path: str, host_dir: Path) -> list[Path]:
        """Copy the container directory `path` into `host_dir`; [] when it does not exist."""

        def fetch() -> list[Path]:
            try:
                stream, _ = self.client.api.get_archive(container_id, path)
            except docker.errors.NotFound:
                return []
            data = io.BytesIO(b"".join(stream))
            with tarfile.open(fileobj=data) as tar:
                # The "data" filter refuses links and paths that would escape host_dir.
                tar.extractall(host_dir, filter="data")
                return [host_dir / m.name for m in tar.getmembers() if m.isfile()]

        return await self.call(fetch)

    async def stats(self, container_id: str, on_stats: Callable[[Stats], None]) -> None:
        """Report CPU and memory about once a second until the container goes away."""

        def produce() -> Iterator[dict[str, Any]]:
            try:
                yield from self.client.api.stats(container_id, stream=True, decode=True)
            except docker.errors.DockerException:
                return

        def consume(sample: dict[str, Any]) -> None:
            stats = parse_stats(sample)
            if stats is not None:
                on_stats(stats)

        await self._pump(produce, consume)


def _hang_up(response: Any) -> None:
    """End a streaming HTTP response that another thread is reading: shutdown() wakes the
    blocked read and tells the peer at once (close() would wait for the reader)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # a zombie (killed, not yet reaped by its parent) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def instance_name(home: Path) -> str:
    """One label value per data directory, so instances never touch each other's containers."""
    return hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]


def parse_stats(sample: dict[str, Any]) -> Stats | None:
    """CPU % as `docker stats` computes it (100% = one core), memory usage and limit."""
    try:
        cpu, pre = sample["cpu_stats"], sample["precpu_stats"]
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [1])
        percent = cpu_delta / system_delta * online * 100.0 if system_delta > 0 else 0.0
        mem = sample["memory_stats"]
        return Stats(cpu_percent=round(percent, 1), memory_bytes=int(mem.get("usage", 0)),
                     memory_limit_bytes=int(mem.get("limit", 0)))
    except (KeyError, TypeError):
        return None
