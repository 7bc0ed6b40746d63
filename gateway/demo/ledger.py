"""The demo ``ledger``: accounts, balances and transfers in SQLite, served by FastAPI.

It is deliberately a plain backend: it records the ``Idempotency-Key`` header of each transfer
but does not deduplicate by it, so exactly-once effects must come from the gateway's own store
(tests count rows). ``respond_delay_ms`` sleeps after the transfer is committed and before the
response, opening the window the kill-and-retry test needs.

Run: ``python -m gateway.demo.ledger --host 127.0.0.1 --port 0 --db ledger.db``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.demo._serve import SQLiteStore, add_healthz, base_parser, run_main

__all__ = ["DEMO_ACCOUNTS", "LedgerProblem", "app", "create_app", "main", "seed_history"]

# (id, owner, team, currency, opening balance in cents)
DEMO_ACCOUNTS: tuple[tuple[str, str, str, str, int], ...] = (
    ("A1", "alice", "demo", "USD", 1_000_000),
    ("A2", "bob", "demo", "USD", 250_000),
    ("A3", "carol", "demo", "USD", 5_000),
    ("A4", "dave", "demo", "EUR", 300_000),
)

ACCOUNT_ID = r"^[A-Za-z0-9_-]{1,32}$"


class Currency(StrEnum):
    USD = "USD"
    EUR = "EUR"
    GBP = "GBP"


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Account(BaseModel):
    id: str
    owner: str
    team: str
    currency: Currency
    balance: float = Field(description="Current balance in the account's currency.")


class Balance(BaseModel):
    account: str
    balance: float
    currency: Currency
    as_of: datetime


class TransferRequest(BaseModel):
    """A money movement between two accounts of the same currency."""

    model_config = ConfigDict(extra="forbid")

    from_account: str = Field(pattern=ACCOUNT_ID, description="Account to debit, e.g. A1.")
    to_account: str = Field(pattern=ACCOUNT_ID, description="Account to credit, e.g. A2.")
    # No multipleOf: JSON Schema validators check it in binary floating point (0.29 would be
    # "not a multiple of 0.01"), so the two-decimal rule is enforced exactly, server-side.
    amount: float = Field(
        ge=0.01, le=1_000_000_000, description="Amount to move; at most two decimal places."
    )
    currency: Currency = Field(default=Currency.USD, description="Must match both accounts.")
    memo: str | None = Field(default=None, max_length=140, description="Free-text reference.")


class Transfer(BaseModel):
    id: str
    from_account: str
    to_account: str
    amount: float
    currency: Currency
    memo: str | None = None
    idempotency_key: str | None = Field(
        default=None, description="The Idempotency-Key header the transfer was created with."
    )
    created_at: datetime


class TransferPage(BaseModel):
    transfers: list[Transfer]
    next_cursor: str | None = Field(
        default=None, description="Pass as cursor for the next page; null on the last page."
    )


class LedgerProblem(Exception):
    """A business-rule failure, answered as ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, team TEXT NOT NULL, currency TEXT NOT NULL,
    balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0));
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY, from_account TEXT NOT NULL REFERENCES accounts(id),
    to_account TEXT NOT NULL REFERENCES accounts(id), amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL, memo TEXT, idempotency_key TEXT, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS transfers_idem ON transfers(idempotency_key);
"""


def _init_db(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    if conn.execute("SELECT COUNT(*) FROM accounts").fetchone()[0] == 0:
        conn.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)", DEMO_ACCOUNTS)


def seed_history(
    conn: sqlite3.Connection,
    accounts: Sequence[tuple[str, str, str, str, int]],
    transfers: Sequence[tuple[str, str, str, int, str, str | None, str]],
) -> None:
    """Insert extra accounts ``(id, owner, team, currency, balance_cents)`` and historical
    transfers ``(id, from, to, amount_cents, currency, memo, created_at)`` as they are (no
    balance arithmetic): a bulk data set for benchmarks, e.g. the token benchmark
    (bench/tokenbench)."""
    conn.executemany("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?)", accounts)
    conn.executemany(
        "INSERT OR REPLACE INTO transfers VALUES (?, ?, ?, ?, ?, ?, NULL, ?)", transfers
    )


def _cents(amount: float) -> int:
    try:
        exact = Decimal(str(amount))
    except InvalidOperation as exc:  # pragma: no cover - pydantic already checked it's a number
        raise LedgerProblem(422, "invalid_amount", f"amount {amount!r} is not a number") from exc
    if exact != exact.quantize(Decimal("0.01")):
        raise LedgerProblem(422, "invalid_amount", f"amount {amount} has more than 2 decimals")
    return int(exact * 100)


def _money(cents: int) -> float:
    return cents / 100


def _account(row: sqlite3.Row) -> Account:
    return Account(
        id=row["id"],
        owner=row["owner"],
        team=row["team"],
        currency=Currency(row["currency"]),
        balance=_money(row["balance_cents"]),
    )


def _transfer(row: sqlite3.Row) -> Transfer:
    return Transfer(
        id=row["id"],
        from_account=row["from_account"],
        to_account=row["to_account"],
        amount=_money(row["amount_cents"]),
        currency=Currency(row["currency"]),
        memo=row["memo"],
        idempotency_key=row["idempotency_key"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def _get_account(conn: sqlite3.Connection, account: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM accounts WHERE id = ?", (account,)
    ).fetchone()
    if row is None:
        raise LedgerProblem(404, "unknown_account", f"account {account!r} does not exist")
    return row


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown account or transfer."},
}
_TRANSFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    409: {"model": ErrorResponse, "description": "Insufficient funds."},
    422: {"description": "Invalid transfer (same account, currency mismatch, bad amount)."},
}


def create_app(
    db_path: str | Path, *, respond_delay_ms: int = 0, exports: bool = False
) -> FastAPI:
    """A ledger app over the SQLite file ``db_path`` (created and seeded on first use).

    ``exports`` adds ``GET /exports/transfers`` (``export_transfers``, tagged ``reports``): a
    paged, date-bounded bulk read for reporting workloads. Off by default, so the default demo
    catalog stays as it is."""
    store = SQLiteStore(db_path, _init_db)
    app = FastAPI(
        title="Switchboard demo ledger",
        version="1.0.0",
        description="Accounts, balances and transfers for the Switchboard demo.",
    )
    app.state.store = store

    @app.exception_handler(LedgerProblem)
    async def _problem(_: Request, exc: LedgerProblem) -> JSONResponse:
        body = ErrorResponse(error=ErrorBody(code=exc.code, message=exc.message))
        return JSONResponse(status_code=exc.status, content=body.model_dump())

    add_healthz(app, store)

    @app.get(
        "/accounts",
        operation_id="list_accounts",
        tags=["accounts"],
        summary="List accounts",
        response_model=list[Account],
    )
    def list_accounts(
        team: Annotated[str | None, Query(description="Only accounts of this team.")] = None,
    ) -> list[Account]:
        """All accounts with their owner, team, currency and current balance."""
        with store.connect() as conn:
            if team is None:
                rows = conn.execute("SELECT * FROM accounts ORDER BY id").fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM accounts WHERE team = ? ORDER BY id", (team,)
                ).fetchall()
        return [_account(r) for r in rows]

    @app.get(
        "/accounts/{account}/balance",
        operation_id="get_balance",
        tags=["accounts"],
        summary="Get an account balance",
        response_model=Balance,
        responses=_ERRORS,
    )
    def get_balance(
        account: Annotated[str, PathParam(pattern=ACCOUNT_ID, description="Account id, e.g. A1.")],
    ) -> Balance:
        """The current balance of one account."""
        with store.connect() as conn:
            row = _get_account(conn, account)
        return Balance(
            account=row["id"],
            balance=_money(row["balance_cents"]),
            currency=Currency(row["currency"]),
            as_of=datetime.now(UTC),
        )

    @app.post(
        "/transfers",
        operation_id="create_transfer",
        tags=["payments"],
        summary="Transfer money between accounts",
        status_code=201,
        response_model=Transfer,
        responses=_TRANSFER_ERRORS,
        openapi_extra={"x-switchboard-tags": ["compliance"]},
    )
    def create_transfer(body: TransferRequest, request: Request) -> Transfer:
        """Debit ``from_account`` and credit ``to_account`` atomically.

        The ``Idempotency-Key`` header is recorded with the transfer but not deduplicated.
        """
        if body.from_account == body.to_account:
            raise LedgerProblem(422, "same_account", "from_account and to_account are the same")
        cents = _cents(body.amount)
        key = request.headers.get("idempotency-key")
        transfer_id = "T" + uuid.uuid4().hex[:12]
        created = datetime.now(UTC).isoformat()
        with store.transaction() as conn:
            src = _get_account(conn, body.from_account)
            dst = _get_account(conn, body.to_account)
            for acc in (src, dst):
                if acc["currency"] != body.currency.value:
                    raise LedgerProblem(
                        422,
                        "currency_mismatch",
                        f"account {acc['id']} holds {acc['currency']}, not {body.currency.value}",
                    )
            if src["balance_cents"] < cents:
                raise LedgerProblem(
                    409,
                    "insufficient_funds",
                    f"account {src['id']} has {_money(src['balance_cents']):.2f} "
                    f"{src['currency']}, needs {_money(cents):.2f}",
                )
            conn.execute(
                "UPDATE accounts SET balance_cents = balance_cents - ? WHERE id = ?",
                (cents, src["id"]),
            )
            conn.execute(
                "UPDATE accounts SET balance_cents = balance_cents + ? WHERE id = ?",
                (cents, dst["id"]),
            )
            conn.execute(
                "INSERT INTO transfers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (transfer_id, src["id"], dst["id"], cents, body.currency.value, body.memo, key,
                 created),
            )
            row = conn.execute("SELECT * FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
        if respond_delay_ms > 0:
            time.sleep(respond_delay_ms / 1000)
        return _transfer(row)

    @app.get(
        "/transfers",
        operation_id="list_transfers",
        tags=["payments"],
        summary="List transfers",
        response_model=list[Transfer],
    )
    def list_transfers(
        account: Annotated[
            str | None, Query(description="Only transfers from or to this account.")
        ] = None,
        idempotency_key: Annotated[
            str | None, Query(description="Only transfers created with this Idempotency-Key.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="Most recent first.")] = 100,
    ) -> list[Transfer]:
        """Transfers, newest first, optionally filtered by account or idempotency key."""
        sql, args = "SELECT * FROM transfers WHERE 1=1", []
        if account is not None:
            sql += " AND (from_account = ? OR to_account = ?)"
            args += [account, account]
        if idempotency_key is not None:
            sql += " AND idempotency_key = ?"
            args.append(idempotency_key)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        with store.connect() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [_transfer(r) for r in rows]

    @app.get(
        "/transfers/{transfer_id}",
        operation_id="get_transfer",
        tags=["payments"],
        summary="Get a transfer",
        response_model=Transfer,
        responses=_ERRORS,
    )
    def get_transfer(
        transfer_id: Annotated[str, PathParam(description="Transfer id.")],
    ) -> Transfer:
        """One transfer by id."""
        with store.connect() as conn:
            row = conn.execute("SELECT * FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
        if row is None:
            raise LedgerProblem(404, "unknown_transfer", f"transfer {transfer_id!r} does not exist")
        return _transfer(row)

    if exports:
        _add_exports(app, store)
    return app


def _add_exports(app: FastAPI, store: SQLiteStore) -> None:
    @app.get(
        "/exports/transfers",
        operation_id="export_transfers",
        tags=["reports"],
        summary="Export transfers in a date range (paged)",
        response_model=TransferPage,
    )
    def export_transfers(
        since: Annotated[date, Query(description="First day included (YYYY-MM-DD, UTC).")],
        until: Annotated[date, Query(description="First day NOT included (YYYY-MM-DD, UTC).")],
        cursor: Annotated[
            str | None, Query(description="next_cursor of the previous page.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Transfers per page.")] = 1000,
    ) -> TransferPage:
        """All transfers created in [since, until), oldest first, ``limit`` per page."""
        try:
            offset = int(cursor or 0)
        except ValueError as exc:
            raise LedgerProblem(422, "invalid_cursor", f"cursor {cursor!r} is not valid") from exc
        with store.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM transfers WHERE created_at >= ? AND created_at < ? "
                "ORDER BY created_at, rowid LIMIT ? OFFSET ?",
                (since.isoformat(), until.isoformat(), limit + 1, max(offset, 0)),
            ).fetchall()
        more = len(rows) > limit
        return TransferPage(
            transfers=[_transfer(r) for r in rows[:limit]],
            next_cursor=str(offset + limit) if more else None,
        )


def _default_db() -> str:
    return os.environ.get("LEDGER_DB") or str(Path(tempfile.gettempdir()) / "switchboard-ledger.db")


def _exports_from_env() -> bool:
    return os.environ.get("LEDGER_EXPORTS", "") not in ("", "0")


def _delay_from_env() -> int:
    return int(os.environ.get("LEDGER_RESPOND_DELAY_MS", "0") or 0)


# The module-level ASGI app (``gateway.demo.ledger:app``); the file is only touched on first use.
app = create_app(
    _default_db(), respond_delay_ms=_delay_from_env(), exports=_exports_from_env()
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser("ledger", _default_db())
    parser.add_argument(
        "--respond-delay-ms",
        type=int,
        default=_delay_from_env(),
        help="sleep this long after committing a transfer, before responding "
        "(env LEDGER_RESPOND_DELAY_MS; for crash tests)",
    )

    parser.add_argument(
        "--exports",
        action="store_true",
        default=_exports_from_env(),
        help="serve GET /exports/transfers, a paged bulk read (env LEDGER_EXPORTS=1)",
    )

    def make(args: argparse.Namespace) -> FastAPI:
        return create_app(args.db, respond_delay_ms=args.respond_delay_ms, exports=args.exports)

    return run_main(argv, parser, make)


if __name__ == "__main__":
    raise SystemExit(main())
