"""Message types the transport itself speaks."""

from __future__ import annotations

from typing import Annotated, Literal

from edgefl.codec import MaxLen, Message, message


@message("ping", max_size=16 << 20)
class Ping(Message):
    nonce: Annotated[bytes, MaxLen(64)]
    payload: bytes = b""


@message("pong", max_size=16 << 20)
class Pong(Message):
    nonce: Annotated[bytes, MaxLen(64)]
    payload: bytes = b""


@message("status")
class Status(Message):
    """Liveness: ``online`` when a session connects; the same session's ``offline`` is its last will."""

    state: Annotated[str, MaxLen(16)]
    session: Annotated[bytes, MaxLen(32)]


@message("error")
class Error(Message):
    """Response to a request that could not be served."""

    code: Annotated[str, MaxLen(64)]
    detail: Annotated[str, MaxLen(1024)] = ""


STATES: tuple[Literal["online", "offline"], ...] = ("online", "offline")
