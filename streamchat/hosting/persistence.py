"""Chat history on a real database: Chainlit's SQLAlchemy data layer, with the schema it needs.

Chainlit's `SQLAlchemyDataLayer` writes users, threads, steps, elements and feedback with plain
SQL, but creates no tables, and the schema in Chainlit's docs lacks columns that chainlit 2.12
writes (`autoCollapse` on steps, upstream issue #2832), so such writes fail and are only logged
as warnings. Here the schema is declared to match what the installed Chainlit writes (a test
compares it with Chainlit's own step, element, feedback and thread types), created on first
start, and migrated by adding any missing column to an existing database. Failed writes are
logged as errors.

`DATABASE_URL` chooses the database: a SQLite file (the default, `sqlite:///streamchat.db`) or
PostgreSQL (`postgresql://user:password@host/db`). History needs login: without
CHAINLIT_AUTH_SECRET nothing is stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chainlit.data.sql_alchemy import SQLAlchemyDataLayer
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
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.schema import CreateColumn

from streamchat.core.errors import ConfigError
from streamchat.core.history import METADATA_KEY, Conversation
from streamchat.core.types import EndReason
from streamchat.settings import ConfigReader

log = logging.getLogger("streamchat.hosting.persistence")

DEFAULT_DATABASE_URL = "sqlite:///streamchat.db"

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


class StreamchatDataLayer(SQLAlchemyDataLayer):
    """Chainlit's SQLAlchemy data layer on a schema we create and migrate."""

    def __init__(self, database: Database) -> None:
        connect_args: dict[str, Any] = {}
        if database.dialect == "sqlite":
            connect_args["timeout"] = 30  # wait for another writer rather than fail
        super().__init__(database.url, connect_args=connect_args, user_thread_limit=1000)
        self.database = database
        if database.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def create_schema(self) -> list[str]:
        """Create missing tables and add missing columns; returns what was added."""
        async with self.engine.begin() as connection:
            return await connection.run_sync(_create_or_migrate)

    async def execute_sql(
        self, query: str, parameters: dict[str, Any]
    ) -> list[dict[str, Any]] | int | None:
        if self.database.dialect == "sqlite":
            # SQLite takes no lists or dicts; they are stored as JSON text.
            parameters = {
                key: json.dumps(value) if isinstance(value, list | dict) else value
                for key, value in parameters.items()
            }
        async with self.async_session() as session:
            try:
                await session.begin()
                result = await session.execute(text(query), parameters)
                await session.commit()
            except SQLAlchemyError as exc:
                await session.rollback()
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
    it, as it did live."""
    conversation = Conversation()
    question: str | None = None
    answered = False
    for step in steps:
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


def last_answer_id(steps: Sequence[Mapping[str, Any]]) -> str | None:
    """The id of the last stored answer (where a Continue button belongs)."""
    answers = [s for s in steps if s.get("type") == "assistant_message" and not s.get("isError")]
    return str(answers[-1]["id"]) if answers else None


def _stored_answer(metadata: object) -> tuple[str, EndReason] | None:
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            return None
    if not isinstance(metadata, dict):
        return None
    stored = metadata.get(METADATA_KEY)
    if not isinstance(stored, dict) or not isinstance(stored.get("text"), str):
        return None
    try:
        reason = EndReason(str(stored.get("reason")))
    except ValueError:
        reason = EndReason.COMPLETE
    return stored["text"], reason
