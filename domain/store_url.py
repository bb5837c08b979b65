"""Store URLs -> the ``eventsourcing`` persistence environment (DESIGN.md §5).

``memory://``, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``, and
``postgresql://user[:password]@host[:port]/dbname[?schema=name]``. The password never appears in
an error message: URLs are redacted before they are quoted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from domain.errors import StoreUnavailable, StoreURLError

DEFAULT_DB_URL = "sqlite:///.sequent/sequent.db"
DB_URL_ENV = "SEQUENT_DB"
CONNECT_TIMEOUT_SECONDS = 5
SQLITE_LOCK_TIMEOUT_SECONDS = 30


def default_url() -> str:
    return os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class StoreConfig:
    kind: str  # "memory", "sqlite" or "postgresql"
    env: dict[str, str]
    url: str  # redacted, safe to print

    def prepare(self) -> None:
        """Creates what the event store expects to exist: the SQLite file's folder, or the
        PostgreSQL schema named in the URL. For PostgreSQL this is also one direct connection
        attempt, so a refused connection is reported at once rather than after the pool's
        timeout."""
        if self.kind == "sqlite":
            _prepare_sqlite(self)
        elif self.kind == "postgresql":
            _prepare_postgres(self)


def parse_store_url(url: str) -> StoreConfig:
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(
            redact(str(url)), "expected memory://, sqlite:///PATH or postgresql://…"
        )
    scheme = url.split("://", 1)[0].lower()
    parser = _PARSERS.get(scheme)
    if parser is None:
        raise StoreURLError(
            redact(url), f"unknown scheme {scheme!r}; use memory, sqlite or postgresql"
        )
    return parser(url)


def _memory(url: str) -> StoreConfig:
    if url.rstrip("/") != "memory:":
        raise StoreURLError(url, "memory:// takes no path")
    return StoreConfig("memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"}, url)


def _sqlite(url: str) -> StoreConfig:
    path = url[len("sqlite://") :]
    if not path.startswith("/") or path == "/":
        raise StoreURLError(
            url, "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = path[1:]  # sqlite:///x.db names the relative path x.db, as in SQLAlchemy
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": path,
        "SQLITE_LOCK_TIMEOUT": str(SQLITE_LOCK_TIMEOUT_SECONDS),
    }
    return StoreConfig("sqlite", env, url)


def _postgres(url: str) -> StoreConfig:
    safe = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port or 5432
    except ValueError as exc:
        raise StoreURLError(safe, str(exc)) from None
    dbname = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not dbname or "/" in dbname:
        raise StoreURLError(safe, "expected postgresql://user@host:port/dbname")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"schema"})
    if unknown:
        raise StoreURLError(safe, f"unknown query parameter(s) {', '.join(unknown)}; only schema")
    schema = query.get("schema", [""])[0]
    if schema and not schema.replace("_", "").isalnum():
        raise StoreURLError(safe, f"schema {schema!r} must be letters, digits and underscores")
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": parts.hostname,
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS),
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
    }
    return StoreConfig("postgresql", env, safe)


_PARSERS = {"memory": _memory, "sqlite": _sqlite, "postgresql": _postgres, "postgres": _postgres}


def _prepare_sqlite(config: StoreConfig) -> None:
    path = config.env["SQLITE_DBNAME"]
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(config.url, exc.strerror or str(exc)) from None


def postgres_conninfo(env: dict[str, str]) -> str:
    return psycopg.conninfo.make_conninfo(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        connect_timeout=env["POSTGRES_CONNECT_TIMEOUT"],
    )


def _prepare_postgres(config: StoreConfig) -> None:
    schema = config.env["POSTGRES_SCHEMA"]
    try:
        with psycopg.connect(postgres_conninfo(config.env), autocommit=True) as conn:
            if schema:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(config.url, first_line(exc)) from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
