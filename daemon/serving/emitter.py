"""Push HUD messages to a HUD server that listens (`--emit-to ws://HOST:PORT`), as the HUD
document's runner does: bare JSON objects, one per WebSocket message, no JSON-RPC envelope,
no token unless one is given.

`offer` never waits: a run is never slowed by a slow or absent server. While disconnected the
emitter buffers up to `limit` messages; past that it drops the oldest output line first,
then the oldest progress or container message, never a start or complete message. It
reconnects with backoff (0.5 s doubling to 10 s) until it is closed; `close` sends what is
buffered within a grace period, then stops.
"""

from __future__ import annotations

import logging
from collections import deque

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from protocol import Event, dumps

log = logging.getLogger("tbhud.emitter")

BUFFER_LIMIT = 10_000  # messages held while the server is away
CLOSE_GRACE_SEC = 5.0  # to deliver what is buffered when the run or daemon ends
# Never dropped: what a HUD needs to know a run or task started or ended.
KEPT = ("tb_suite_info", "tb_run_start", "tb_run_complete", "tb_task_start",
        "tb_task_complete")


@attrs.define(eq=False)
class Emitter:
    url: str
    token: str | None = None
    limit: int = BUFFER_LIMIT
    buffer: deque[tuple[str, str]] = attrs.Factory(deque)  # (type, JSON text), oldest first
    dropped: int = 0
    closing: bool = False
    _wake: trio.Event = attrs.Factory(trio.Event)

    def offer(self, event: Event) -> None:
        """Queue `event` for the server (never waits)."""
        self.buffer.append((event.type, dumps(event)))
        if len(self.buffer) > self.limit:
            self._drop_one()
        self._wake.set()

    def _drop_one(self) -> None:
        for kinds in (("tb_task_output",), None):
            for index, (kind, _) in enumerate(self.buffer):
                if (kind in kinds) if kinds else kind not in KEPT:
                    del self.buffer[index]
                    self.dropped += 1
                    return
        # Only start and complete messages are held: they are few; keep them all.

    def close(self) -> None:
        """Deliver what is buffered (within CLOSE_GRACE_SEC), then stop."""
        self.closing = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        delay = 0.5
        while not (self.closing and not self.buffer):
            try:
                with trio.move_on_after(CLOSE_GRACE_SEC if self.closing else float("inf")):
                    await self._deliver()
                if self.closing:
                    break  # delivered, or the grace period is over
            except (OSError, HandshakeError, ConnectionClosed) as exc:
                if self.closing:
                    log.warning("%s: %d message(s) not delivered: %s", self.url,
                                len(self.buffer), exc)
                    return
                log.info("%s: %s; retrying in %gs", self.url, exc, delay)
                with trio.move_on_after(delay):
                    await self._wait_closing()
                delay = min(delay * 2, 10.0)

    async def _wait_closing(self) -> None:
        while not self.closing:
            self._wake = trio.Event()
            await self._wake.wait()

    async def _deliver(self) -> None:
        headers = [(b"authorization", f"Bearer {self.token}".encode())] if self.token else []
        async with open_websocket_url(self.url, extra_headers=headers, connect_timeout=10,
                                      disconnect_timeout=2) as ws:
            log.info("%s: connected", self.url)
            while True:
                while self.buffer:
                    await ws.send_message(self.buffer[0][1])
                    self.buffer.popleft()  # only once sent: a broken send keeps it
                if self.dropped:
                    log.warning("%s: dropped %d message(s) while it was away", self.url,
                                self.dropped)
                    self.dropped = 0
                if self.closing:
                    return
                self._wake = trio.Event()
                await self._wake.wait()



@attrs.define(eq=False)
class Emitters:
    """The daemon's emitters: its own (every message) and those a run asked for (that run's
    messages only, closed when it ends)."""

    nursery: trio.Nursery
    everything: list[Emitter] = attrs.Factory(list)
    by_run: dict[str, list[Emitter]] = attrs.Factory(dict)

    async def add(self, emitter: Emitter, run_id: str | None = None) -> None:
        await self.nursery.start(emitter.run)
        if run_id is None:
            self.everything.append(emitter)
        else:
            self.by_run.setdefault(run_id, []).append(emitter)

    def offer(self, event: Event) -> None:
        for emitter in self.everything:
            emitter.offer(event)
        for emitter in self.by_run.get(getattr(event, "run_id", None) or "", ()):
            emitter.offer(event)

    def close_run(self, run_id: str) -> None:
        for emitter in self.by_run.pop(run_id, ()):
            emitter.close()

    def close(self) -> None:
        for emitter in [*self.everything, *(e for es in self.by_run.values() for e in es)]:
            emitter.close()
