"""Fan-out of a run's stream events to any number of subscribers, lossy but never silent.

One ring of recent events is shared by all subscribers; each keeps its own cursor. Publishing is
O(1) whatever the number of subscribers, never blocks, and memory is bounded by the largest
subscriber buffer (or the replay size). A subscriber further behind than its own buffer skips
to the newest `buffer` events and is told how many it missed with a `StreamLagged` event.
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import final

import attrs
import trio

from ._checks import is_count
from ._events import Event, StreamLagged
from ._util import NoPublicConstructor

DEFAULT_BUFFER = 1024
DEFAULT_REPLAY = 1024
YIELD_EVERY = 32


@final
@attrs.frozen
class StreamStatistics:
    """A view of a run's stream: live subscribers, events published, events kept."""

    subscribers: int
    published: int
    kept: int


@final
@attrs.frozen
class SubscriberStatistics:
    """One subscriber's view (`EventStream.statistics()`)."""

    buffer: int
    """How far behind it may fall before it loses the oldest events."""
    waiting: int
    """Events published and still kept that it has not read yet (at most `buffer`)."""
    missed: int
    """Events it lost by falling behind, in all (each loss announced by `StreamLagged`)."""
    last_sequence: int
    closed: bool


class Broadcast:
    """The ring and the wake-up point shared by one run's subscribers."""

    def __init__(self, replay: int = DEFAULT_REPLAY) -> None:
        # By sequence number: O(1) reads anywhere in the ring (a deque is O(n) in the middle).
        self._ring: dict[int, Event] = {}
        self._first_seq = 1  # sequence number of the oldest event kept
        self._last_seq = 0  # sequence number of the newest event published
        self._replay = replay
        # Held weakly: a stream dropped without closing stops counting (see _forget).
        self._subscribers: dict[int, weakref.ref[EventStream]] = {}
        self._capacity = replay
        self._stale_capacity = False
        # Set at the next publish; made by the first reader that waits, dropped once set, so
        # a publish nobody waits for checks one attribute.
        self._new_events: trio.Event | None = None
        self.closed = False

    def publish(self, event: Event) -> None:
        """Add an event for every subscriber; never blocks."""
        if self.closed:
            return
        self._last_seq += 1
        self._ring[self._last_seq] = event
        if self._stale_capacity:
            self._resize()
        elif len(self._ring) > self._capacity:
            self._trim()
        if self._new_events is not None:
            self._wake_readers(self._new_events)

    def close(self) -> None:
        """The run ended: subscribers drain what they hold, then their iteration ends."""
        self.closed = True
        if self._new_events is not None:
            self._wake_readers(self._new_events)

    def _wake_readers(self, new_events: trio.Event) -> None:
        self._new_events = None
        new_events.set()

    def subscribe(self, buffer: int, replay: bool) -> EventStream:
        if not is_count(buffer, 1):
            raise ValueError(f"stream buffer must be an int >= 1, got {buffer!r}")
        start = self._first_seq if replay else self._last_seq + 1
        stream = EventStream._create(self, buffer, start)
        if not self.closed or replay:
            key = id(stream)
            self._subscribers[key] = weakref.ref(stream, lambda _: self._forget(key))
            self._capacity = max(self._capacity, buffer)
        return stream

    def _forget(self, key: int) -> None:
        """A stream was dropped without closing. Only flags the ring for resizing at the next
        publish: this runs from the garbage collector, possibly in the middle of one."""
        self._subscribers.pop(key, None)
        self._stale_capacity = True

    def unsubscribe(self, stream: EventStream) -> None:
        self._subscribers.pop(id(stream), None)
        self._resize()

    def _resize(self) -> None:
        self._stale_capacity = False
        live = [ref() for ref in list(self._subscribers.values())]
        self._capacity = max([self._replay, *(s.buffer for s in live if s is not None)])
        self._trim()

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(len(self._subscribers), self._last_seq, len(self._ring))

    def waiting_for(self, stream: EventStream) -> int:
        """Events kept for `stream` that it has not read (what it would read before waiting)."""
        oldest_allowed = max(self._first_seq, self._last_seq - stream.buffer + 1, stream.next_seq)
        return max(0, self._last_seq - oldest_allowed + 1)

    def _trim(self) -> None:
        excess = len(self._ring) - self._capacity
        for seq in range(self._first_seq, self._first_seq + excess):
            del self._ring[seq]
        if excess > 0:
            self._first_seq += excess

    def read_unusual(self, stream: EventStream) -> Event | None:
        """The subscriber's next read when `EventStream._take`'s fast path does not apply: its
        StreamLagged notice if it fell behind, None if it is caught up."""
        oldest_allowed = max(self._first_seq, self._last_seq - stream.buffer + 1)
        if stream.next_seq < oldest_allowed:
            missed = oldest_allowed - stream.next_seq
            stream.missed += missed
            stream.next_seq = oldest_allowed
            return StreamLagged(missed=missed)
        if stream.next_seq > self._last_seq:
            return None
        event = self._ring[stream.next_seq]
        stream.last_sequence = stream.next_seq
        stream.next_seq += 1
        return event

    async def wait_for_events(self) -> None:
        if self._new_events is None:
            self._new_events = trio.Event()
        await self._new_events.wait()


@final
class EventStream(metaclass=NoPublicConstructor):
    """A subscription to a run's stream: an async iterator and an async context manager.

    Subscribed when created, so nothing published afterwards is missed. Ends once the run has
    ended and everything it holds was read. `last_sequence` is the run-wide sequence number of
    the last event yielded (1 for the first event the run published).
    """

    def __init__(self, broadcast: Broadcast, buffer: int, next_seq: int) -> None:
        self._broadcast = broadcast
        self.buffer = buffer
        self.next_seq = next_seq
        self.last_sequence = next_seq - 1
        self.missed = 0
        self._closed = False
        self._reads_since_yield = 0

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        # Every read is a cancellation point, taken before an event is: a cancelled read loses
        # nothing. A reader with events waiting yields to the scheduler every YIELD_EVERY
        # reads rather than every read: its backlog is bounded by its buffer, and a task
        # switch per event per subscriber is most of the cost of a wide fan-out.
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._closed:
            event = self._take()
            if event is not None:
                self._reads_since_yield += 1
                if self._reads_since_yield >= YIELD_EVERY:
                    self._reads_since_yield = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            if self._broadcast.closed:
                break
            self._reads_since_yield = 0
            await self._broadcast.wait_for_events()
        self.close()
        raise StopAsyncIteration

    def receive_nowait(self) -> Event:
        """The next event if one is kept, without waiting: the read of a batch drain.

        Like trio's `MemoryReceiveChannel.receive_nowait`, it is not a checkpoint: a reader
        that waits with `async for` and then drains its backlog with this pays one
        cancellation check per batch, not per event. Raises `trio.WouldBlock` when the
        reader is caught up and the run goes on, `trio.EndOfChannel` once the stream has
        ended (the run ended and everything was read) or was closed.
        """
        if not self._closed:
            event = self._take()
            if event is not None:
                return event
            if not self._broadcast.closed:
                raise trio.WouldBlock
            self.close()
        raise trio.EndOfChannel

    def _take(self) -> Event | None:
        """The next event for this reader (its StreamLagged notice first if it fell
        behind), or None when it is caught up."""
        broadcast = self._broadcast
        seq, last = self.next_seq, broadcast._last_seq
        # The usual case, inline: the next event is kept and this reader is not behind.
        if broadcast._first_seq <= seq <= last and last - seq < self.buffer:
            self.last_sequence = seq
            self.next_seq = seq + 1
            return broadcast._ring[seq]
        return broadcast.read_unusual(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def aclose(self) -> None:
        """Leave the stream; the run stops keeping events for this subscriber."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._broadcast.unsubscribe(self)

    def statistics(self) -> SubscriberStatistics:
        """This subscriber's numbers now: unread events, events lost to lag, position."""
        waiting = 0 if self._closed else self._broadcast.waiting_for(self)
        return SubscriberStatistics(
            self.buffer, waiting, self.missed, self.last_sequence, self._closed
        )
