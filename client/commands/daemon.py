"""`tbhud daemon ARGS`: the daemon's own entry (`python -m daemon ARGS`, daemon/cli.py), run
in this process. Its arguments are handed over untouched, so both spell the same options."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_daemon(args: argparse.Namespace) -> int:
    from daemon.cli import main  # the daemon's code: only when asked for

    return main(args.args, prog="tbhud daemon")


def register(sub: Any) -> None:
    # No option of its own (not even -h): every argument goes to the daemon's parser.
    p = sub.add_parser("daemon", add_help=False, prefix_chars="\0",
                       help="start the daemon in the background (or --foreground, status, "
                            "stop); `tbhud daemon --help` for its options")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_daemon)
