"""Chat history on a real database (`DATABASE_URL`: SQLite by default, or PostgreSQL), through
Chainlit's SQLAlchemy data layer.

Chainlit creates no tables, so the schema it writes is declared here, created and migrated at
start under a lock (replicas may start together). A database outage loses nothing the replica
keeps: writes queue in order and are replayed when it answers, and each chat is told once.
An answer is saved as it streams, marked in progress with a heartbeat; one whose heartbeat
stopped (its replica was lost) is shown as interrupted, with Continue, when its chat is
opened again. Feedback is written only by the chat's owner. See docs/deployment.md."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
from chainlit.element import ElementDict
from chainlit.step import StepDict
from chainlit.types import (
    Feedback,
    PageInfo,
    PaginatedResponse,
    Pagination,
    ThreadDict,
    ThreadFilter,
)
from chainlit.user import PersistedUser, User
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Table,
    Text,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.schema import CreateColumn

from streamchat.core.errors import ConfigError
from streamchat.core.history import METADATA_KEY, Conversation
from streamchat.core.segments import SEGMENT_KEY
from streamchat.core.sinks import IN_PROGRESS_KEY
from streamchat.core.types import EndReason
from streamchat.settings import ConfigReader

log = logging.getLogger("streamchat.hosting.persistence")

DEFAULT_DATABASE_URL = "sqlite:///streamchat.db"
# Held (per transaction) while one process creates or migrates the schema on PostgreSQL.
SCHEMA_LOCK_KEY = 0x5C0DE_C4A7
PENDING_LIMIT = 10_000  # writes kept during an outage; the oldest are dropped beyond it
UNSAVED_NOTICE = (
    "Chat history is unavailable: the database cannot be reached, so this chat is not being "
    "saved for now. It is saved when the database is back (if this server keeps running)."
)
# Under an answer whose server was lost while it was written (its saves stopped).
LOST_WRITER_NOTE = "Interrupted: the server writing this answer was lost."
# An answer being written is read as abandoned once not saved for this many save intervals.
STALE_AFTER_SAVES = 3

# JSON documents: JSONB on PostgreSQL, JSON text on SQLite. Lists of tags: TEXT[] / JSON text.
_Json = JSON().with_variant(JSONB(), "postgresql")
_Tags = JSON().with_variant(ARRAY(Text()), "postgresql")

SCHEMA = MetaData()

USERS = Table(
    "users",
    SCHEMA,
    Column("id", Text, primary_key=True),
    Column("identifier", Text, nullable=False, unique=True),
    Column("metadata", _Json, nullable=False),
    Column("createdAt", Text),
)

THREADS = Table(
    "threads",
    SCHEMA,
    Column("id", Text, primary_key=True),
    Column("createdAt", Text),
    Column("name", Text),
    Column("userId", Text, ForeignKey("users.id", ondelete="CASCADE"), index=True),
    Column("userIdentifier", Text, index=True),
    Column("tags", _Tags),
    Column("metadata", _Json),
)

STEPS = Table(
    "steps",
    SCHEMA,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column(
        "threadId", Text, ForeignKey("threads.id", ondelete="CASCADE"), nullable=False, index=True
    ),
    Column("parentId", Text),
    Column("command", Text),
    Column("modes", _Json),
    Column("streaming", Boolean, nullable=False),
    Column("waitForAnswer", Boolean),
    Column("isError", Boolean),
    Column("metadata", _Json),
    Column("tags", _Tags),
    Column("input", Text),
    Column("output", Text),
    Column("createdAt", Text),
    Column("start", Text),
    Column("end", Text),
    Column("generation", _Json),
    Column("showInput", Text),
    Column("defaultOpen", Boolean),
    Column("autoCollapse", Boolean),
    Column("language", Text),
    Column("icon", Text),
    Column("indent", Integer),
)

ELEMENTS = Table(
    "elements",
    SCHEMA,
    Column("id", Text, primary_key=True),
    Column("threadId", Text, ForeignKey("threads.id", ondelete="CASCADE"), index=True),
    Column("type", Text),
    Column("chainlitKey", Text),
    Column("path", Text),
    Column("url", Text),
    Column("objectKey", Text),
    Column("name", Text, nullable=False),
    Column("display", Text),
    Column("size", Text),
    Column("language", Text),
    Column("page", Integer),
    Column("props", _Json),
    Column("autoPlay", Boolean),
    Column("playerConfig", _Json),
    Column("forId", Text),
    Column("mime", Text),
)

FEEDBACKS = Table(
    "feedbacks",
    SCHEMA,
    Column("id", Text, primary_key=True),
    Column("forId", Text, nullable=False, index=True),
    Column("threadId", Text),
    Column("value", Integer, nullable=False),
    Column("comment", Text),
)


@dataclass(frozen=True, slots=True)
class Database:
    """Where chat history goes. `url` is SQLAlchemy's async form of DATABASE_URL."""

    url: str
    dialect: str  # "sqlite" or "postgresql"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Database | None:
        """None when history is off (DATABASE_URL=off)."""
        raw = ConfigReader(environ).text("DATABASE_URL")
        return None if raw is None else cls.parse(raw)

    @classmethod
    def parse(cls, raw: str) -> Database:
        problem = (
            "DATABASE_URL must be sqlite:///path/to/file.db or "
            "postgresql://user:password@host:5432/name (got a value that is not)."
        )
        try:
            url = make_url(raw)
        except ArgumentError:
            raise ConfigError(problem) from None
        backend = url.get_backend_name()
        if backend == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ConfigError(
                    "DATABASE_URL: SQLite needs a file (sqlite:///streamchat.db); an in-memory "
                    "database would lose every chat at restart."
                )
            url = url.set(drivername="sqlite+aiosqlite")
        elif backend in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+asyncpg")
        else:
            raise ConfigError(problem)
        return cls(url.render_as_string(hide_password=False), url.get_backend_name())

    @property
    def public_url(self) -> str:
        """The URL without its password, for logs."""
        return make_url(self.url).render_as_string(hide_password=True)


class DatabaseUnavailable(Exception):
    """The database cannot be reached (refused, dropped, timed out): an outage, not a bad query."""


# Errors that say the database could not be reached, rather than that a statement was wrong.
_OUTAGES = (OSError, TimeoutError, PoolTimeout, DisconnectionError)
# asyncpg's own: CannotConnectNowError, ConnectionDoesNotExistError, AdminShutdownError,
# InterfaceError ("connection is closed")...
_ASYNCPG_OUTAGE_WORDS = ("Connect", "Shutdown", "InterfaceError")
# Set by the HTTP layer for a feedback request: a refusal is noted in it, so the route's answer
# can say 403 (Chainlit's route turns every error of the data layer into a 500).
feedback_refusals: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "feedback_refusals", default=None
)
# Set in the task that replays queued writes: its statements go to the database directly.
_replaying: contextvars.ContextVar[bool] = contextvars.ContextVar("replaying", default=False)


def _is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached now (worth waiting for), not that a
    statement failed (which waiting would not fix: SQLite's "no such table" is an
    OperationalError too)."""
    if isinstance(exc, _OUTAGES):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or (exc.orig is not None and _is_outage(exc.orig))
    kind = type(exc)
    return kind.__module__.startswith("asyncpg") and any(
        word in kind.__name__ for word in _ASYNCPG_OUTAGE_WORDS
    )


Pending = tuple[str, dict[str, Any]] | tuple[Callable[..., Awaitable[object]], tuple[Any, ...]]


class StreamchatDataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer on a schema we create and migrate, that survives
    database outages (see the module docstring). `notify_unsaved` tells the current chat that
    history is not being saved; `retry_s` is the longest pause between reconnection attempts."""

    def __init__(
        self,
        database: Database,
        *,
        notify_unsaved: Callable[[], Awaitable[None]] | None = None,
        retry_s: float = 5.0,
        partial_save_s: float = 1.0,
    ) -> None:
        connect_args: dict[str, Any] = {}
        if database.dialect == "sqlite":
            connect_args["timeout"] = 30  # wait for another writer rather than fail
        super().__init__(database.url, connect_args=connect_args, user_thread_limit=1000)
        self.database = database
        if database.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.notify_unsaved = notify_unsaved or self._toast_once_per_chat
        self._told: set[str] = set()  # chats told during this outage
        self.retry_s = retry_s
        self.partial_save_s = partial_save_s
        self.pending: deque[Pending] = deque()
        self.schema_ready = False
        self.back = asyncio.Event()  # set while writes reach the database
        self.back.set()
        self._recovery: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return not self.back.is_set()

    async def create_schema(self) -> list[str]:
        """Create missing tables and add missing columns; returns what was added."""
        async with self.engine.begin() as connection:
            if self.database.dialect == "postgresql":
                # Another replica may be doing the same: wait for it, then see what it made.
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
                )
            added = await connection.run_sync(_create_or_migrate)
        self.schema_ready = True
        return added

    async def prepare(self) -> bool:
        """Create or migrate the schema at start. False if the database cannot be reached:
        writes are then queued and the schema is prepared when it answers."""
        try:
            await self.create_schema()
        except Exception as exc:
            if not _is_outage(exc):
                raise
            log.error(
                "cannot reach the database at %s (%s): writes are queued until it answers",
                self.database.public_url,
                type(exc).__name__,
            )
            self._went_down()
            return False
        return True

    async def execute_sql(
        self, query: str, parameters: dict[str, Any]
    ) -> list[dict[str, Any]] | int | None:
        writes = not query.lstrip().upper().startswith("SELECT")
        if writes and (self.down or self.pending) and not _replaying.get():
            await self._queue((query, parameters))
            return None
        try:
            return await self._execute(query, parameters)
        except DatabaseUnavailable:
            if _replaying.get():
                raise
            if writes:
                await self._queue((query, parameters))
                return None
            raise

    async def _execute(
        self, query: str, parameters: dict[str, Any]
    ) -> list[dict[str, Any]] | int | None:
        if self.database.dialect == "sqlite":
            # SQLite takes no lists or dicts; they are stored as JSON text.
            parameters = {
                key: json.dumps(value) if isinstance(value, list | dict) else value
                for key, value in parameters.items()
            }
        try:
            async with self.async_session() as session:
                try:
                    await session.begin()
                    result = await session.execute(text(query), parameters)
                    await session.commit()
                except SQLAlchemyError as exc:
                    await session.rollback()
                    if _is_outage(exc):
                        raise
                    # The statement's shape, never its values (they hold chat text).
                    log.error(
                        "database write failed: %s (%s)",
                        type(exc.orig if hasattr(exc, "orig") else exc).__name__,
                        " ".join(query.split())[:120],
                    )
                    return None
                if result.returns_rows:
                    rows = [dict(row._mapping) for row in result.fetchall()]
                    return list(self.clean_result(rows))
                return int(result.rowcount)
        except Exception as exc:
            if not _is_outage(exc):
                raise
            self._went_down()
            raise DatabaseUnavailable(type(exc).__name__) from exc

    # --- an outage ---------------------------------------------------------------------------

    def _went_down(self) -> None:
        if not self.down:
            log.error("chat history database unreachable at %s", self.database.public_url)
        self.back.clear()
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _queue(self, item: Pending) -> None:
        if len(self.pending) >= PENDING_LIMIT:
            self.pending.popleft()
            log.error("history write dropped: %d writes are waiting already", PENDING_LIMIT)
        self.pending.append(item)
        if not self.down and (self._recovery is None or self._recovery.done()):
            self._went_down()
        try:
            await self.notify_unsaved()
        except Exception as exc:  # telling the user must never break the chat
            log.warning("could not say that history is not saved: %s", type(exc).__name__)

    async def _recover(self) -> None:
        """Wait for the database, prepare the schema if needed, replay the queue in order."""
        _replaying.set(True)
        pause = min(0.25, self.retry_s)
        while True:
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.retry_s)
            try:
                if not self.schema_ready:
                    await self.create_schema()
                await self._execute("SELECT 1", {})
                replayed = 0
                while self.pending:
                    item = self.pending[0]
                    if isinstance(item[0], str):
                        await self._execute(item[0], item[1])
                    else:
                        await item[0](*item[1])
                    self.pending.popleft()
                    replayed += 1
            except Exception as exc:
                if not _is_outage(exc) and not isinstance(exc, DatabaseUnavailable):
                    log.error("replaying history writes failed: %s", type(exc).__name__)
                    if self.pending:
                        self.pending.popleft()  # a write that cannot succeed is not retried
                continue
            self.back.set()
            self._told.clear()
            log.info("chat history database is back: %d queued writes saved", replayed)
            return

    async def close(self) -> None:
        """At shutdown (Chainlit calls it): stop waiting for the database; what is still
        queued is lost with this process, and the log says how much."""
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        if self.pending:
            log.error(
                "%d history writes were never saved: the database stayed down", len(self.pending)
            )
        await super().close()

    async def _deferred(self, method: Callable[..., Awaitable[object]], *args: Any) -> bool:
        """Run a write that also reads; queued whole if the database is down. True if it ran."""
        if (self.down or self.pending) and not _replaying.get():
            await self._queue((method, args))
            return False
        try:
            await method(*args)
        except DatabaseUnavailable:
            if _replaying.get():
                raise
            await self._queue((method, args))
            return False
        return True

    async def _read(self, method: Callable[..., Awaitable[Any]], fallback: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except DatabaseUnavailable:
            return fallback

    def told(self, chat_id: str) -> None:
        """This chat has been told already (the toast is not shown to it again)."""
        self._told.add(chat_id)

    async def _toast_once_per_chat(self) -> None:
        """Tell the chat whose write was queued, once per outage, that it is not saved."""
        from chainlit.context import ChainlitContextException, context

        try:
            session = context.session
        except ChainlitContextException:
            return
        if session.id in self._told:
            return
        self._told.add(session.id)
        await context.emitter.send_toast(UNSAVED_NOTICE, "warning")

    # --- answers being written ----------------------------------------------------------------

    async def save_partial(self, step: StepDict) -> None:
        """Save an answer as it stands while it streams. Skipped during an outage: only the
        final answer waits in the queue, not every heartbeat."""
        if self.down or self.pending:
            return
        await self.update_step(step)

    async def settle_unfinished_answers(self, thread: ThreadDict) -> None:
        """The answers of `thread` still marked as being written: one whose writer may be alive
        (saved within the last STALE_AFTER_SAVES intervals) is waited for that long at most;
        one whose writer stopped saving is marked interrupted, in `thread` (what the page is
        sent) and in the database."""
        stale_s = STALE_AFTER_SAVES * self.partial_save_s
        for step in thread.get("steps") or []:
            if _in_progress(step.get("metadata")) is None:
                continue
            deadline = time.monotonic() + stale_s
            while (saved_at := _in_progress(step.get("metadata"))) is not None:
                if time.time() - saved_at > stale_s or time.monotonic() > deadline:
                    break
                await asyncio.sleep(self.partial_save_s / 2)  # its next save, or none
                rows = await self._read(
                    self.execute_sql,
                    None,
                    'SELECT "output", "metadata" FROM steps WHERE "id" = :id',
                    {"id": step["id"]},
                )
                if isinstance(rows, list) and rows:
                    step["output"] = rows[0]["output"] or ""
                    step["metadata"] = _as_dict(rows[0]["metadata"])
            saved_at = _in_progress(step.get("metadata"))
            if saved_at is None or time.time() - saved_at <= stale_s:
                continue  # finished meanwhile, or still being written elsewhere
            stored = _as_dict(step.get("metadata")).get(METADATA_KEY) or {}
            answer = str(stored.get("text") or step.get("output") or "")
            metadata = {
                **_as_dict(step.get("metadata")),
                METADATA_KEY: {"text": answer, "reason": EndReason.ERROR.value, "stream_id": ""},
            }
            step["output"] = "\n\n".join(p for p in (answer, f"*({LOST_WRITER_NOTE})*") if p)
            step["metadata"] = metadata
            step["streaming"] = False
            log.warning("an answer whose server was lost is marked interrupted")
            await self.execute_sql(
                'UPDATE steps SET "output" = :output, "metadata" = :metadata, '
                '"streaming" = :streaming WHERE "id" = :id',
                {
                    "id": step["id"],
                    "output": step["output"],
                    "metadata": json.dumps(metadata),
                    "streaming": False,
                },
            )

    # --- Chainlit's methods that read: fail soft during an outage ---------------------------

    async def update_thread(
        self,
        thread_id: str,
        name: str | None = None,
        user_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
    ) -> None:
        parent = super().update_thread
        await self._deferred(parent, thread_id, name, user_id, metadata, tags)

    async def delete_thread(self, thread_id: str) -> None:
        await self._deferred(super().delete_thread, thread_id)

    async def delete_element(self, element_id: str, thread_id: str | None = None) -> None:
        await self._deferred(super().delete_element, element_id, thread_id)

    async def create_user(self, user: User) -> PersistedUser | None:
        try:
            return await super().create_user(user)
        except DatabaseUnavailable:
            return None

    async def get_user(self, identifier: str) -> PersistedUser | None:
        user: PersistedUser | None = await self._read(super().get_user, None, identifier)
        return user

    async def get_thread(self, thread_id: str) -> ThreadDict | None:
        thread: ThreadDict | None = await self._read(super().get_thread, None, thread_id)
        return thread

    async def get_thread_author(self, thread_id: str) -> str:
        return str(await self._read(super().get_thread_author, "", thread_id))

    async def get_step(self, step_id: str) -> StepDict | None:
        step: StepDict | None = await self._read(super().get_step, None, step_id)
        return step

    async def get_element(self, thread_id: str, element_id: str) -> ElementDict | None:
        element: ElementDict | None = await self._read(
            super().get_element, None, thread_id, element_id
        )
        return element

    async def list_threads(
        self, pagination: Pagination, filters: ThreadFilter
    ) -> PaginatedResponse[ThreadDict]:
        empty: PaginatedResponse[ThreadDict] = PaginatedResponse(
            data=[], pageInfo=PageInfo(hasNextPage=False, startCursor=None, endCursor=None)
        )
        threads: PaginatedResponse[ThreadDict] = await self._read(
            super().list_threads, empty, pagination, filters
        )
        return threads

    # --- feedback: only on answers in the requester's own chats ------------------------------

    async def upsert_feedback(self, feedback: Feedback) -> str:
        await self._check_owner("steps", feedback.forId)
        feedback.id = feedback.id or str(uuid.uuid4())
        return str(await super().upsert_feedback(feedback))

    async def delete_feedback(self, feedback_id: str) -> bool:
        await self._check_owner("feedbacks", feedback_id)
        return bool(await super().delete_feedback(feedback_id))

    async def _check_owner(self, table: str, item_id: str) -> None:
        """Raise PermissionError unless the HTTP request being served (if any) comes from the
        author of the chat holding this step or feedback."""
        from streamchat.hosting.auth import request_identity
        from streamchat.hosting.security import current_request

        scope = current_request.get()
        if scope is None:
            return  # not an HTTP request: the app itself writes
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        cookies = request_cookies(headers.get("cookie", ""))
        requester = request_identity(headers.get("authorization"), cookies)
        chain = 'steps s JOIN threads t ON t."id" = s."threadId" WHERE s."id" = :id'
        if table == "feedbacks":
            chain = (
                'feedbacks f JOIN steps s ON s."id" = f."forId" '
                'JOIN threads t ON t."id" = s."threadId" WHERE f."id" = :id'
            )
        rows = await self._read(
            super().execute_sql,
            None,
            f'SELECT t."userIdentifier" AS author FROM {chain}',
            {"id": item_id},
        )
        author = rows[0]["author"] if isinstance(rows, list) and rows else None
        if requester is None or author != requester:
            log.warning("feedback refused: not the author of the chat")
            refusal = "You can only give feedback on answers in your own chats."
            if (refusals := feedback_refusals.get()) is not None:
                refusals.append(refusal)
            raise PermissionError(refusal)


def request_cookies(header: str) -> dict[str, str]:
    """The cookies of a Cookie header (none when it is malformed)."""
    from http.cookies import SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # a malformed cookie header: no session
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_or_migrate(connection: Connection) -> list[str]:
    inspector = inspect(connection)
    existing = set(inspector.get_table_names())
    added: list[str] = []
    for table in SCHEMA.sorted_tables:
        if table.name not in existing:
            table.create(connection)
            added.append(table.name)
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            # New columns are added nullable: rows written before them have no value.
            added_column = Column(column.name, column.type, nullable=True)
            ddl = CreateColumn(added_column).compile(dialect=connection.dialect)
            connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN {ddl}'))
            added.append(f"{table.name}.{column.name}")
    if added:
        log.info("database schema: added %s", ", ".join(added))
    return added


# --- rebuilding a chat from its stored steps -------------------------------------------------


def conversation_from_steps(steps: Sequence[Mapping[str, Any]]) -> Conversation:
    """The history of a stored thread, as the model saw it: each question that was sent, with
    the answer text the user saw (no footers or notes) and how it ended. Questions that were
    refused or got no answer are left out; an answer that continued an interrupted one extends
    it, as it did live. A long answer stored in parts (core/segments.py) is one answer: its
    last stored part holds its whole text."""
    conversation = Conversation()
    question: str | None = None
    answered = False
    for step in _whole_answers(steps):
        kind = step.get("type")
        if kind == "user_message":
            question, answered = str(step.get("output") or ""), False
            continue
        if kind != "assistant_message" or step.get("isError"):
            continue
        stored = _stored_answer(step.get("metadata"))
        if stored is None:
            continue
        text, reason = stored
        if question is not None and not answered:
            conversation.add_user(question)
            conversation.add_assistant(text, reason)
            answered = True
        elif answered and conversation.interrupted_answer() is not None:
            conversation.extend_last_answer(text, reason)
    return conversation


def _whole_answers(steps: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """`steps` without the earlier parts of answers stored in parts: only each answer's last
    part with stored text is kept (an earlier part may still hold a save of the answer made
    while it streamed, before it went on in the next part)."""

    def answer_of(step: Mapping[str, Any]) -> str:
        segment = _as_dict(step.get("metadata")).get(SEGMENT_KEY)
        first = segment.get("first") if isinstance(segment, dict) else None
        return str(first) if isinstance(first, str) and first else str(step.get("id"))

    last_part = {
        answer_of(step): index
        for index, step in enumerate(steps)
        if step.get("type") == "assistant_message" and _stored_answer(step.get("metadata"))
    }
    return [
        step
        for index, step in enumerate(steps)
        if step.get("type") != "assistant_message" or last_part.get(answer_of(step), index) == index
    ]


def last_answer_id(steps: Sequence[Mapping[str, Any]]) -> str | None:
    """The id of the last stored answer (where a Continue button belongs)."""
    answers = [s for s in steps if s.get("type") == "assistant_message" and not s.get("isError")]
    return str(answers[-1]["id"]) if answers else None


def _as_dict(metadata: object) -> dict[str, Any]:
    """Stored metadata as a dict (SQLite keeps it as JSON text)."""
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return {}
    return metadata if isinstance(metadata, dict) else {}


def _in_progress(metadata: object) -> float | None:
    """When an answer still being written was last saved; None for a finished one."""
    stored = _as_dict(metadata).get(METADATA_KEY)
    saved_at = stored.get(IN_PROGRESS_KEY) if isinstance(stored, dict) else None
    return float(saved_at) if isinstance(saved_at, int | float) else None


def _stored_answer(metadata: object) -> tuple[str, EndReason] | None:
    stored = _as_dict(metadata).get(METADATA_KEY)
    if not isinstance(stored, dict) or not isinstance(stored.get("text"), str):
        return None
    try:
        reason = EndReason(str(stored.get("reason")))
    except ValueError:
        reason = EndReason.COMPLETE
    return stored["text"], reason
