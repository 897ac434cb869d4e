"""Control commands: plain data the handler sends through the run's inbox.

The run loop interprets them, in the order they arrive among the commits queued behind them,
and answers each through its `Reply`. Whatever applying a command raises (a `WorkflowError`,
a warning turned into an error) goes back to the one caller that sent it. Each command's
`method` is the handler method that sends it, so messages name what the user called.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

import attrs
import trio

from ._codec import WorkflowSnapshot
from ._errors import WorkflowError

T = TypeVar("T")


@attrs.define(eq=False)
class Reply(Generic[T]):
    """The answer to one command: a value or an exception, once."""

    _done: trio.Event = attrs.Factory(trio.Event)
    _value: T | None = None
    _error: Exception | None = None

    def set(self, value: T) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: Exception) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        error = self._error
        if isinstance(error, WorkflowError):
            raise error.fresh()  # the same error may answer several callers (a pause)
        if error is not None:
            raise error  # a command's own failure: it has one caller
        return self._value  # type: ignore[return-value]  # set() stored a T


@attrs.frozen(eq=False)
class Pause:
    """Stop dispatching; answered once no step runs."""

    method: ClassVar[str] = "pause"
    cancel_in_flight: bool
    reply: Reply[None] = attrs.Factory(Reply)


@attrs.frozen(eq=False)
class Resume:
    """Dispatch again what waited while paused."""

    method: ClassVar[str] = "resume"
    reply: Reply[None] = attrs.Factory(Reply)


@attrs.frozen(eq=False)
class TakeSnapshot:
    """Capture the run as it stands after every commit before this command."""

    method: ClassVar[str] = "snapshot"
    reply: Reply[WorkflowSnapshot] = attrs.Factory(Reply)


@attrs.frozen(eq=False)
class RespondToInput:
    """Route the answer to an outstanding input request."""

    method: ClassVar[str] = "respond_to_input"
    request_id: str
    response: Any
    reply: Reply[None] = attrs.Factory(Reply)


Command = Pause | Resume | TakeSnapshot | RespondToInput
