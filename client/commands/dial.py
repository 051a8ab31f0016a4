"""`tbhud dial-stdio`: this box's daemon socket on stdin/stdout, for a client on another box
that reaches it through ssh (`tbhud hud --ssh HOST`, `--url ssh://HOST`). The daemon is
started when none runs, as for any local client. Bytes are copied both ways until either
side ends."""

from __future__ import annotations

import argparse
import os
from typing import Any

import trio

CHUNK = 65536


async def bridge(stdin: trio.abc.ReceiveStream, stdout: trio.abc.SendStream) -> None:
    from client.connection import open_local_socket

    socket = await open_local_socket(autostart=True)
    async with socket, trio.open_nursery() as nursery:

        async def copy(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
            try:
                while data := await source.receive_some(CHUNK):
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the other side went away: the bridge ends below all the same
            nursery.cancel_scope.cancel()  # one side ended: so does the bridge

        nursery.start_soon(copy, stdin, socket)
        nursery.start_soon(copy, socket, stdout)


def cmd_dial_stdio(args: argparse.Namespace) -> int:
    async def main() -> None:
        # Duplicates: trio makes its fds non-blocking, ours stay as the shell gave them.
        async with trio.lowlevel.FdStream(os.dup(0)) as stdin, \
                trio.lowlevel.FdStream(os.dup(1)) as stdout:
            await bridge(stdin, stdout)

    trio.run(main)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("dial-stdio", help="connect stdin/stdout to this box's daemon (what "
                       "--ssh runs on the far side)")
    p.set_defaults(func=cmd_dial_stdio)
