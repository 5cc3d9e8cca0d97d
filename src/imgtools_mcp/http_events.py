"""Resumable SSE streams over Streamable HTTP: a bounded in-memory event store, kept apart per MCP session.

A client whose stream drops mid-call reconnects with `GET /mcp` and `Last-Event-ID`; the transport asks the store
for what that stream sent after the event, replays it, then goes on with the live tail (progress, the result).

The SDK hands the store only (stream id, message), and stream ids are JSON-RPC request ids, which every client
numbers from 0 or 1: with one store for all sessions, session B's request 1 would replay session A's. So each
event is filed under the session it belongs to, found through a context variable that `SessionScope` (ASGI
middleware) sets for every request: a session's transport tasks are started from its initialize request and keep
that request's context, and the session id is filled in when that response announces it.
"""

from __future__ import annotations

import contextvars
import itertools
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Suggested to clients in each stream's first event: how soon to reconnect after a drop, in milliseconds.
RETRY_INTERVAL_MS = 1000
MAX_EVENTS_PER_STREAM = 2000  # a long sweep sends a progress event per step; the result comes last
MAX_STREAMS = 512  # across all sessions; the least recently written is forgotten first


@dataclass
class _SessionBox:
    """Which session the current request (and the tasks it starts) belongs to; filled in once it is known."""

    session_id: str = ""


_current_session: contextvars.ContextVar[_SessionBox | None] = contextvars.ContextVar("imgtools_session", default=None)


class SessionScope:
    """ASGI middleware: every request runs with a `_SessionBox` naming its MCP session.

    A request that carries `mcp-session-id` belongs to that session. The initialize request has none; its box is
    filled from the response's `mcp-session-id` header, and the session's long-lived tasks, started while that
    request ran, hold the same box.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = MCP_SESSION_ID_HEADER.lower().encode()
        given = next((value.decode("latin-1") for name, value in scope.get("headers", []) if name == header), "")
        box = _SessionBox(given)
        token = _current_session.set(box)

        async def send_and_learn(message: Message) -> None:
            if message["type"] == "http.response.start" and not box.session_id:
                for name, value in message.get("headers", []):
                    if name.lower() == header:
                        box.session_id = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_and_learn)
        finally:
            _current_session.reset(token)


@dataclass
class _Stream:
    session_id: str
    events: deque[tuple[int, JSONRPCMessage | None]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS_PER_STREAM))


class BoundedEventStore(EventStore):
    """The last MAX_EVENTS_PER_STREAM events of the last MAX_STREAMS streams, in memory.

    Event ids are `<stream key>:<sequence>` with a random stream key, so an id says which stream it is in and
    cannot be guessed; replay also requires the asking request's session to be the stream's own.
    """

    def __init__(self, *, max_streams: int = MAX_STREAMS, max_events_per_stream: int = MAX_EVENTS_PER_STREAM) -> None:
        self.max_streams = max_streams
        self.max_events_per_stream = max_events_per_stream
        self._streams: OrderedDict[str, _Stream] = OrderedDict()  # stream key -> events, least recently written first
        self._keys: dict[tuple[str, StreamId], str] = {}  # (session, stream id) -> stream key
        self._ids: dict[str, StreamId] = {}  # stream key -> stream id
        self._sequence = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        box = _current_session.get()
        session_id = box.session_id if box is not None else ""
        key = self._keys.get((session_id, stream_id))
        if key is None or key not in self._streams:
            key = secrets.token_hex(8)
            self._keys[(session_id, stream_id)] = key
            self._ids[key] = stream_id
            self._streams[key] = _Stream(session_id, deque(maxlen=self.max_events_per_stream))
            while len(self._streams) > self.max_streams:
                old_key, old = self._streams.popitem(last=False)
                self._keys.pop((old.session_id, self._ids.pop(old_key)), None)
        stream = self._streams[key]
        self._streams.move_to_end(key)
        sequence = next(self._sequence)
        stream.events.append((sequence, message))
        return f"{key}:{sequence}"

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        key, _, number = last_event_id.rpartition(":")
        stream = self._streams.get(key)
        if stream is None or not number.isdigit():
            return None
        box = _current_session.get()
        if box is None or box.session_id != stream.session_id:
            return None  # another session's stream (or none): nothing to replay to this requester
        after = int(number)
        for sequence, message in list(stream.events):
            if sequence > after and message is not None:
                await send_callback(EventMessage(message, f"{key}:{sequence}"))
        return self._ids[key]

    def event_count(self) -> int:
        # Not __len__: the SDK tests the store for truth ("is resumability on?"), and an empty one must pass.
        return sum(len(stream.events) for stream in self._streams.values())
