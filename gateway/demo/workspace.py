"""The demo ``workspace``: calendar events, an email outbox and contacts in SQLite (FastAPI).

Events are seeded relative to *today* (UTC) on every start that finds none for today, so the
demo's "today's longest meeting" always exists, also on a database created yesterday.

Run: ``python -m gateway.demo.workspace --host 127.0.0.1 --port 0 --db workspace.db``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from gateway.demo._serve import SQLiteStore, add_healthz, base_parser, run_main

__all__ = ["DEMO_CONTACTS", "app", "create_app", "main", "seed_contacts", "seed_events_for"]

EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

# (email, name, team, title)
DEMO_CONTACTS: tuple[tuple[str, str, str, str], ...] = (
    ("alice@example.com", "Alice Martin", "demo", "Engineering manager"),
    ("bob@example.com", "Bob Chen", "demo", "Backend engineer"),
    ("carol@example.com", "Carol Diaz", "demo", "Product designer"),
    ("dave@example.com", "Dave Okafor", "demo", "Finance lead"),
    ("erin@example.com", "Erin Novak", "ops", "SRE"),
    ("frank@example.com", "Frank Weber", "ops", "SRE"),
)
_TEAM = [c[0] for c in DEMO_CONTACTS if c[2] == "demo"]

# (day offset, start HH:MM, minutes, title, calendar, attendees, location)
_SEED: tuple[tuple[int, str, int, str, str, list[str], str], ...] = (
    (0, "09:00", 15, "Daily standup", "team", _TEAM, "Room 1"),
    (0, "10:00", 90, "Architecture review: payments gateway", "team", _TEAM, "Room 2"),
    (0, "12:30", 30, "1:1 Alice / Bob", "team", _TEAM[:2], "Alice's office"),
    (0, "14:00", 60, "Sprint planning", "team", _TEAM, "Room 1"),
    (0, "16:00", 45, "Incident retro", "ops", ["erin@example.com", "frank@example.com"], "Online"),
    (-1, "09:00", 15, "Daily standup", "team", _TEAM, "Room 1"),
    (-1, "13:00", 120, "Quarterly budget", "team", _TEAM, "Room 3"),
    (1, "09:00", 15, "Daily standup", "team", _TEAM, "Room 1"),
    (1, "10:00", 180, "Team offsite", "team", _TEAM, "Harbour venue"),
)


class Event(BaseModel):
    id: str
    calendar: str
    title: str
    start: datetime
    end: datetime
    organizer: str
    attendees: list[str]
    location: str | None = None


class EmailRequest(BaseModel):
    """An email to queue in the outbox."""

    model_config = ConfigDict(extra="forbid")

    to: list[Annotated[str, Field(pattern=EMAIL)]] = Field(
        min_length=1, max_length=50, description="Recipient email addresses."
    )
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=20_000, description="Plain-text body.")


class Email(BaseModel):
    id: str
    to: list[str]
    subject: str
    body: str
    status: str = Field(description="Always 'queued' in the demo: nothing is really sent.")
    created_at: datetime


class Contact(BaseModel):
    email: str
    name: str
    team: str
    title: str


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, calendar TEXT NOT NULL, title TEXT NOT NULL, start TEXT NOT NULL,
    end_ TEXT NOT NULL, day TEXT NOT NULL, organizer TEXT NOT NULL, attendees TEXT NOT NULL,
    location TEXT);
CREATE INDEX IF NOT EXISTS events_day ON events(day);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, recipients TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
    status TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (
    email TEXT PRIMARY KEY, name TEXT NOT NULL, team TEXT NOT NULL, title TEXT NOT NULL);
"""


def seed_events_for(conn: sqlite3.Connection, today: date) -> None:
    """Insert the demo events around ``today`` unless they are already there (idempotent)."""
    for i, (offset, hhmm, minutes, title, calendar, attendees, location) in enumerate(_SEED):
        day = today + timedelta(days=offset)
        start = datetime.combine(day, time.fromisoformat(hhmm), tzinfo=UTC)
        end = start + timedelta(minutes=minutes)
        conn.execute(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                f"E{day:%Y%m%d}-{i:02d}",
                calendar,
                title,
                start.isoformat(),
                end.isoformat(),
                day.isoformat(),
                attendees[0],
                json.dumps(attendees),
                location,
            ),
        )


def seed_contacts(conn: sqlite3.Connection, contacts: Sequence[tuple[str, str, str, str]]) -> None:
    """Insert extra directory entries ``(email, name, team, title)`` (replacing same emails):
    a bulk data set for benchmarks, e.g. the token benchmark (bench/tokenbench)."""
    conn.executemany("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?, ?)", contacts)


def _init_db(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.executemany("INSERT OR IGNORE INTO contacts VALUES (?, ?, ?, ?)", DEMO_CONTACTS)
    seed_events_for(conn, datetime.now(UTC).date())


def _event(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        calendar=row["calendar"],
        title=row["title"],
        start=datetime.fromisoformat(row["start"]),
        end=datetime.fromisoformat(row["end_"]),
        organizer=row["organizer"],
        attendees=json.loads(row["attendees"]),
        location=row["location"],
    )


def _email(row: sqlite3.Row) -> Email:
    return Email(
        id=row["id"],
        to=json.loads(row["recipients"]),
        subject=row["subject"],
        body=row["body"],
        status=row["status"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown event."}}


def create_app(db_path: str | Path) -> FastAPI:
    """A workspace app over the SQLite file ``db_path`` (created and seeded on first use)."""
    store = SQLiteStore(db_path, _init_db)
    app = FastAPI(
        title="Switchboard demo workspace",
        version="1.0.0",
        description="Calendar events, an email outbox and contacts for the Switchboard demo.",
    )
    app.state.store = store

    add_healthz(app, store)

    @app.get(
        "/events",
        operation_id="list_events",
        tags=["calendar"],
        summary="List calendar events",
        response_model=list[Event],
    )
    def list_events(
        date: Annotated[
            date | None, Query(description="Only events on this day (YYYY-MM-DD, UTC).")
        ] = None,
        calendar: Annotated[
            str | None, Query(description="Only events of this calendar, e.g. team or ops.")
        ] = None,
    ) -> list[Event]:
        """Calendar events ordered by start time, with their attendees."""
        sql, args = "SELECT * FROM events WHERE 1=1", []
        if date is not None:
            sql += " AND day = ?"
            args.append(date.isoformat())
        if calendar is not None:
            sql += " AND calendar = ?"
            args.append(calendar)
        with store.connect() as conn:
            rows = conn.execute(sql + " ORDER BY start, id", args).fetchall()
        return [_event(r) for r in rows]

    @app.get(
        "/events/{event_id}",
        operation_id="get_event",
        tags=["calendar"],
        summary="Get a calendar event",
        response_model=Event,
        responses=_NOT_FOUND,
    )
    def get_event(event_id: Annotated[str, PathParam(description="Event id.")]) -> Event:
        """One event by id."""
        with store.connect() as conn:
            row = conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            raise HTTPException(404, detail=f"event {event_id!r} does not exist")
        return _event(row)

    @app.post(
        "/emails",
        operation_id="send_email",
        tags=["email"],
        summary="Send an email",
        status_code=201,
        response_model=Email,
    )
    def send_email(body: EmailRequest) -> Email:
        """Queue an email in the outbox (the demo never delivers it)."""
        email_id = "M" + uuid.uuid4().hex[:12]
        created = datetime.now(UTC).isoformat()
        with store.transaction() as conn:
            conn.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?)",
                (email_id, json.dumps(body.to), body.subject, body.body, "queued", created),
            )
            row = conn.execute("SELECT * FROM outbox WHERE id = ?", (email_id,)).fetchone()
        return _email(row)

    @app.get(
        "/emails",
        operation_id="list_outbox",
        tags=["email"],
        summary="List the email outbox",
        response_model=list[Email],
    )
    def list_outbox(
        limit: Annotated[int, Query(ge=1, le=500, description="Most recent first.")] = 100,
    ) -> list[Email]:
        """Emails queued by send_email, newest first."""
        with store.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM outbox ORDER BY created_at DESC, rowid DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_email(r) for r in rows]

    @app.get(
        "/contacts",
        operation_id="list_contacts",
        tags=["contacts"],
        summary="List contacts",
        response_model=list[Contact],
    )
    def list_contacts(
        team: Annotated[str | None, Query(description="Only members of this team.")] = None,
    ) -> list[Contact]:
        """People in the directory with their email address, team and title."""
        with store.connect() as conn:
            if team is None:
                rows = conn.execute("SELECT * FROM contacts ORDER BY email").fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM contacts WHERE team = ? ORDER BY email", (team,)
                ).fetchall()
        return [Contact(**dict(r)) for r in rows]

    return app


def _default_db() -> str:
    return os.environ.get("WORKSPACE_DB") or str(
        Path(tempfile.gettempdir()) / "switchboard-workspace.db"
    )


# The module-level ASGI app (``gateway.demo.workspace:app``); the file is only touched on first use.
app = create_app(_default_db())


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser("workspace", _default_db())
    return run_main(argv, parser, lambda args: create_app(args.db))


if __name__ == "__main__":
    raise SystemExit(main())
