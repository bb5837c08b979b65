"""Store URLs -> the ``eventsourcing`` persistence environment (DESIGN.md §5).

``memory://``; ``sqlite:///relative.db`` or ``sqlite:////absolute.db``, with ``?lock_timeout=S``;
``postgresql://user[:password]@host[:port]/dbname``, with ``?schema=NAME&lock_timeout=S`` and
``application_name=NAME`` (how the store's sessions are named in ``pg_stat_activity``, so an
operator can tell one deployment's workers apart, or end exactly their connections).

A URL that could mean two things is refused with StoreURLError rather than guessed at: an
unknown or repeated query parameter (``sqlite:///x.db?mode=ro`` would otherwise name a file
called ``x.db?mode=ro``), a name PostgreSQL would silently cut to 63 bytes (two URLs, one store),
a user or password whose ``/``, ``?`` or ``#`` is not percent-encoded (the URL parser would read
part of the password as the path). The password never appears in an error message:
:func:`redact` masks it by position, without trusting a parser such a password misleads.

Every PostgreSQL session waits at most ``lock_timeout`` for a lock held by another client,
``statement_timeout`` for a statement, and is ended when it idles inside a transaction: a held
lock makes a command fail with StoreBusy within seconds instead of hanging. Opening a store
creates its schema and tables under an advisory lock, so several processes opening one fresh
store at once do not trip over each other's ``CREATE ... IF NOT EXISTS``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql

from domain.errors import StoreUnavailable, StoreURLError
from domain.store_errors import first_line, store_failure

DEFAULT_DB_URL = "sqlite:///.sequent/sequent.db"
DB_URL_ENV = "SEQUENT_DB"
CONNECT_TIMEOUT_SECONDS = 5
SQLITE_LOCK_TIMEOUT_SECONDS = 30
POSTGRES_LOCK_TIMEOUT_SECONDS = 5
POSTGRES_STATEMENT_TIMEOUT_SECONDS = 60
POSTGRES_IDLE_IN_TRANSACTION_SECONDS = 5
MAX_LOCK_TIMEOUT_SECONDS = 3600
# NAMEDATALEN - 1: PostgreSQL truncates longer names without a word.
POSTGRES_MAX_NAME_BYTES = 63
# sequent's own keys (the library has none for them): read by postgres_options().
POSTGRES_STATEMENT_TIMEOUT = "POSTGRES_STATEMENT_TIMEOUT"
POSTGRES_APPLICATION_NAME = "POSTGRES_APPLICATION_NAME"

# Query values that are safe to show in a message; every other one is masked.
SHOWN_PARAMS = frozenset({"schema", "lock_timeout", "application_name"})
POSTGRES_PARAMS = frozenset({"schema", "lock_timeout", "application_name"})
SQLITE_PARAMS = frozenset({"lock_timeout"})
PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")
# Also a word of libpq's ``options`` (-c application_name=NAME): no space, quote or backslash.
APPLICATION_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
HOST_PORT = "expected host, host:port or [IPv6]:port, with a port from 1 to 65535"

__all__ = [
    "DB_URL_ENV",
    "DEFAULT_DB_URL",
    "StoreConfig",
    "default_url",
    "first_line",
    "parse_store_url",
    "postgres_conninfo",
    "postgres_options",
    "redact",
]


def default_url() -> str:
    return os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def redact(url: str) -> str:
    """``url`` fit to print: the password and every query value but :data:`SHOWN_PARAMS`
    masked. Works on positions, not on a parse: everything from the first ``:`` of the user
    info to the *last* ``@`` is masked, so a password holding a raw ``/``, ``?``, ``#`` or ``@``
    is masked whole; without an ``@``, a non-numeric "port" may be a password and is masked."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if colon:
            rest = f"{user}:***{rest[at:]}"
    else:
        end = _authority_end(rest)
        host, colon, port = rest[:end].partition(":")
        if colon and not host.startswith("[") and not port.isdigit():
            rest = f"{host}:***{rest[end:]}"
    location, qmark, query = rest.partition("?")
    if qmark:
        query = "&".join(_redact_param(param) for param in query.split("&"))
    return f"{scheme}{sep}{location}{qmark}{query}"


def _authority_end(rest: str) -> int:
    return next((i for i, char in enumerate(rest) if char in "/?#"), len(rest))


def _redact_param(param: str) -> str:
    name, equals, _ = param.partition("=")
    return param if name in SHOWN_PARAMS or not equals else f"{name}=***"


@dataclass(frozen=True)
class StoreConfig:
    kind: str  # "memory", "sqlite" or "postgresql"
    env: dict[str, str]
    url: str  # redacted, safe to print

    def prepare(self) -> None:
        """Creates what the event store expects to exist (see :meth:`opening`)."""
        with self.opening():
            pass

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Creates what the event store expects to exist, then runs the block that creates its
        tables: the SQLite file's folder; or the PostgreSQL schema, with this store's DDL lock
        held until the block ends, so concurrent openers create the tables one at a time. For
        PostgreSQL this is also one direct connection attempt, so a refused connection is
        reported at once rather than after the pool's timeout."""
        if self.kind == "sqlite":
            _prepare_sqlite(self)
        if self.kind == "postgresql":
            with _postgres_ddl_lock(self):
                yield
        else:
            yield


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
        raise StoreURLError(redact(url), "memory:// takes no path")
    return StoreConfig("memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"}, url)


def _sqlite(url: str) -> StoreConfig:
    safe = redact(url)
    location, _, query = url[len("sqlite://") :].partition("?")
    if not location.startswith("/") or location == "/":
        why = "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        if "@" in location[: _authority_end(location)]:
            why = "a sqlite URL names a file: it takes no user, password or host"
        raise StoreURLError(safe, why)
    params = _query_params(safe, query, SQLITE_PARAMS)
    lock_timeout = _lock_timeout(safe, params, SQLITE_LOCK_TIMEOUT_SECONDS)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": location[1:],  # sqlite:///x.db names the relative path x.db
        "SQLITE_LOCK_TIMEOUT": str(lock_timeout),
    }
    return StoreConfig("sqlite", env, safe)


def _postgres(url: str) -> StoreConfig:
    safe = redact(url)
    rest = url.split("://", 1)[1]
    if "@" in rest[_authority_end(rest) :]:
        raise StoreURLError(
            safe,
            "'@' after the host: a '/', '?', '#' or '@' in the user name, password or database "
            "name must be percent-encoded (%2F, %3F, %23, %40)",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # its text may quote the URL, so it is not repeated
        raise StoreURLError(safe, HOST_PORT) from None
    if port == 0:
        raise StoreURLError(safe, HOST_PORT)
    dbname = unquote(parts.path.removeprefix("/"))
    if not parts.hostname or not dbname or "/" in dbname or parts.fragment:
        raise StoreURLError(safe, "expected postgresql://user@host:port/dbname")
    user = unquote(parts.username or "postgres")
    params = _query_params(safe, parts.query, POSTGRES_PARAMS)
    schema = params.get("schema")
    if schema is not None and not PLAIN_NAME.fullmatch(schema):
        raise StoreURLError(safe, "schema must be ASCII letters, digits and underscores")
    application_name = params.get("application_name")
    if application_name is not None and not APPLICATION_NAME.fullmatch(application_name):
        raise StoreURLError(
            safe, "application_name must be ASCII letters, digits and any of _ . : -"
        )
    for what, name in (
        ("database name", dbname),
        ("user name", user),
        ("schema", schema),
        ("application_name", application_name),
    ):
        _check_length(safe, what, name)
    lock_timeout = _lock_timeout(safe, params, POSTGRES_LOCK_TIMEOUT_SECONDS)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": parts.hostname,
        "POSTGRES_PORT": str(port or 5432),
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema or "",
        "POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS),
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_LOCK_TIMEOUT": str(lock_timeout),
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": str(POSTGRES_IDLE_IN_TRANSACTION_SECONDS),
        POSTGRES_STATEMENT_TIMEOUT: str(POSTGRES_STATEMENT_TIMEOUT_SECONDS),
        POSTGRES_APPLICATION_NAME: application_name or "",
    }
    return StoreConfig("postgresql", env, safe)


_PARSERS = {"memory": _memory, "sqlite": _sqlite, "postgresql": _postgres, "postgres": _postgres}


def _query_params(safe: str, query: str, known: frozenset[str]) -> dict[str, str]:
    pairs = parse_qsl(query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    unknown = sorted(set(names) - known)
    if unknown:
        shown = ", ".join(repr(n) if PLAIN_NAME.fullmatch(n) else "(malformed)" for n in unknown)
        raise StoreURLError(
            safe, f"unknown query parameter(s) {shown}; known: {', '.join(sorted(known))}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StoreURLError(safe, f"query parameter {repeated[0]!r} given more than once")
    return dict(pairs)


def _lock_timeout(safe: str, params: Mapping[str, str], default: int) -> int:
    text = params.get("lock_timeout")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LOCK_TIMEOUT_SECONDS):
        raise StoreURLError(
            safe, f"lock_timeout must be whole seconds from 1 to {MAX_LOCK_TIMEOUT_SECONDS}"
        )
    return int(text)


def _check_length(safe: str, what: str, name: str | None) -> None:
    if name is None:
        return
    if not name:
        raise StoreURLError(safe, f"{what} must not be empty")
    size = len(name.encode("utf-8"))
    if size > POSTGRES_MAX_NAME_BYTES:
        raise StoreURLError(
            safe,
            f"{what} is {size} bytes; PostgreSQL keeps only the first "
            f"{POSTGRES_MAX_NAME_BYTES}, so longer names could share one store",
        )


def _prepare_sqlite(config: StoreConfig) -> None:
    path = config.env["SQLITE_DBNAME"]
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(config.url, exc.strerror or str(exc)) from None


def postgres_options(env: Mapping[str, str]) -> str:
    """libpq ``options`` that start every session with the store's lock, statement and
    idle-in-transaction timeouts (seconds, as in ``env``), and its application_name if the
    URL gave one."""
    timeouts = {
        "lock_timeout": env.get("POSTGRES_LOCK_TIMEOUT") or POSTGRES_LOCK_TIMEOUT_SECONDS,
        "statement_timeout": env.get(POSTGRES_STATEMENT_TIMEOUT)
        or POSTGRES_STATEMENT_TIMEOUT_SECONDS,
        "idle_in_transaction_session_timeout": (
            env.get("POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT")
            or POSTGRES_IDLE_IN_TRANSACTION_SECONDS
        ),
    }
    options = [f"-c {name}={seconds}s" for name, seconds in timeouts.items()]
    if env.get(POSTGRES_APPLICATION_NAME):
        options.append(f"-c application_name={env[POSTGRES_APPLICATION_NAME]}")
    return " ".join(options)


def postgres_conninfo(env: dict[str, str]) -> str:
    return psycopg.conninfo.make_conninfo(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        connect_timeout=env["POSTGRES_CONNECT_TIMEOUT"],
        options=postgres_options(env),
    )


def ddl_lock_key(schema: str) -> str:
    """The advisory lock every creator of a schema's tables holds (the event store's, the read
    models'), so concurrent openers never collide in PostgreSQL's catalog."""
    return f"sequent-ddl:{schema or 'public'}"


@contextmanager
def _postgres_ddl_lock(config: StoreConfig) -> Iterator[None]:
    schema = config.env["POSTGRES_SCHEMA"]
    try:
        conn = psycopg.connect(postgres_conninfo(config.env), autocommit=True)
    except psycopg.Error as exc:
        raise store_failure(config.url, exc) from None
    with conn:  # closing the session releases its advisory lock, however the block ends
        try:
            conn.execute(
                "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (ddl_lock_key(schema),)
            )
            if schema:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                )
        except psycopg.Error as exc:
            raise store_failure(config.url, exc) from None
        yield
