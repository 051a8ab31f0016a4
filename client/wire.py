"""How clients read what the daemon sends: leniently, so that an older client keeps working
against a newer daemon (DESIGN §4: extensions are optional fields and new event types).

Fields a message has and this client does not know are ignored; events of a type it does not
know are skipped (`read_event` gives None). Each is noted once in the debug log
(`tbhud.client.wire`), never raised. Types of the known fields are still checked: a daemon
that sends "2" for a number is wrong, not newer. The daemon, for its part, stays strict about
the requests it reads (protocol.converter.converter).
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from protocol import Event
from protocol.converter import UnknownEvent, event_from_wire, make_converter, structure

T = TypeVar("T")

log = logging.getLogger("tbhud.client.wire")

_noted: set[tuple[str, str]] = set()


def _note_once(kind: str, name: str, text: str) -> None:
    if (kind, name) not in _noted:
        _noted.add((kind, name))
        log.debug("%s (newer than this client; noted once)", text)


def _extra_keys(cls: type, keys: list[str]) -> None:
    for key in keys:
        _note_once(cls.__name__, key, f"ignoring field {key!r} of {cls.__name__}")


lenient = make_converter(forbid_extra_keys=False, on_extra_keys=_extra_keys)


def read(data: Any, cls: type[T]) -> T:
    """A result or snapshot from the daemon as `cls`; ProtocolError when a known field is
    missing or has the wrong type."""
    return structure(data, cls, lenient)


def read_event(message: Any) -> Event | None:
    """An event frame as its class; None for a type this client does not know."""
    try:
        return event_from_wire(message, lenient)
    except UnknownEvent as exc:
        _note_once("event type", str(exc.kind), f"skipping events of type {exc.kind!r}")
        return None
