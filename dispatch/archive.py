"""The archive of ended incidents in PostgreSQL: the only module that speaks PostgreSQL.

Tables (created and upgraded by alembic, dispatch/migrations/): ``incidents`` (one row
per ended incident, keyed by its id, with its whole record, and ``merged_into`` for a
duplicate report an operator merged), ``responders``, ``alerts``
and ``events`` (its timeline, keyed by the Redis stream id). docs/reports.md shows them.

The driver is psycopg 3: async for the archiver and the reports, and, through
SQLAlchemy, the same driver for the migrations; it is typed (mypy --strict checks the
calls). Every connection or server error becomes ``BackendUnavailable("postgres")`` here,
at the boundary; anything else (a bad statement) is a bug and is raised as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from dispatch import report
from dispatch.errors import BackendUnavailable
from dispatch.report import LOCAL_TZ, Counts
from dispatch.store import StoredEvent

__all__ = ["MIGRATIONS", "Archive", "events_of", "migrate"]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# The group expression of each ``by`` (dispatch/report.py, group_key, groups the same).
_GROUP_SQL = {
    "cell": "i.cell_id",
    "kind": "i.kind",
    "subdistrict": "i.subdistrict",
    # The operators' calendar day: an interval zone follows ISO signs (+08:00 is east).
    "day": "to_char(i.reported_at AT TIME ZONE %(tz)s::interval, 'YYYY-MM-DD')",
}

# The headline's definitions (dispatch/headline.py) in SQL, per group:
# needed = not cancelled; time = the first *verified* arrival - reported_at; decided =
# needed and (reached, or the target has passed at %(now)s); within = time <= target;
# percentiles linear-interpolated (percentile_cont), over the needed that were reached.
_REPORT_SQL = """
WITH base AS (
    SELECT {group} AS grp,
           i.state <> 'cancelled' AS needed,
           extract(epoch FROM i.first_verified_at - i.reported_at)::float8 AS time_s,
           extract(epoch FROM %(now)s::timestamptz - i.reported_at)::float8 AS age_s,
           i.escalated_at IS NOT NULL AS escalated,
           (SELECT count(*) FROM alerts a WHERE a.incident_id = i.id) AS alerts
    FROM incidents i
    WHERE i.reported_at >= %(start)s AND i.reported_at < %(end)s
)
SELECT {select_group},
       count(*),
       count(*) FILTER (WHERE needed),
       count(*) FILTER (WHERE needed AND (time_s IS NOT NULL OR age_s > %(target)s)),
       count(*) FILTER (WHERE needed AND time_s <= %(target)s),
       count(*) FILTER (WHERE needed AND time_s IS NOT NULL),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY time_s) FILTER (WHERE needed),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY time_s) FILTER (WHERE needed),
       count(*) FILTER (WHERE escalated),
       coalesce(sum(alerts), 0)
FROM base
{group_by}
"""


# The misses (dispatch/report.py, miss_reason, says the same): needed, decided, and no
# verified arrival within the target; the first reason that applies.
_MISSES_SQL = """
WITH base AS (
    SELECT i.id, i.kind, i.priority, i.reported_at, i.cell_id, i.subdistrict, i.address,
           i.escalated_at IS NOT NULL AS escalated,
           i.first_arrival_at, i.first_accept_at, i.first_alert_at,
           extract(epoch FROM i.first_verified_at - i.reported_at)::float8 AS time_s,
           extract(epoch FROM %(now)s::timestamptz - i.reported_at)::float8 AS age_s
    FROM incidents i
    WHERE i.reported_at >= %(start)s AND i.reported_at < %(end)s AND i.state <> 'cancelled'
), missed AS (
    SELECT *,
           CASE WHEN time_s IS NOT NULL THEN 'late_arrival'
                WHEN first_arrival_at IS NOT NULL THEN 'unverified_arrival'
                WHEN first_accept_at IS NOT NULL THEN 'no_show'
                WHEN first_alert_at IS NOT NULL THEN 'nobody_accepted'
                ELSE 'nobody_in_reach' END AS reason
    FROM base
    WHERE (time_s IS NOT NULL OR age_s > %(target)s)
      AND (time_s IS NULL OR time_s > %(target)s)
)
"""


def _sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy, which must be told to use psycopg 3."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def _migrate_now(url: str) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = _sqlalchemy_url(url)
    command.upgrade(cfg, "head")


async def migrate(url: str) -> None:
    """Create or upgrade the archive's tables to the newest revision (alembic), in a
    thread: alembic is synchronous. Safe when several engines start at once."""
    try:
        await asyncio.to_thread(_migrate_now, url)
    except Exception as exc:
        # SQLAlchemy wraps the driver's errors; a server that is down is no bug.
        if isinstance(getattr(exc, "orig", None), psycopg.OperationalError) or isinstance(
            exc, psycopg.OperationalError
        ):
            raise BackendUnavailable("postgres", str(exc).splitlines()[0]) from exc
        raise


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class Archive:
    """Writes ended incidents and answers reports. Connects on first use; a write that
    fails closes the connection, and the next one connects again."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, report_timeout_s: float = 60.0):
        self.url = url
        self.timeout_s = timeout_s
        self.report_timeout_s = report_timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()  # one writer on the connection at a time

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def _connect(self, statement_timeout_s: float) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.url,
            connect_timeout=max(1, round(self.timeout_s)),
            options=f"-c statement_timeout={round(statement_timeout_s * 1000)}",
            application_name="dispatch-archive",
        )

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except psycopg.errors.UndefinedTable as exc:
            # Asked before the engine's migrations at start have created the tables.
            raise BackendUnavailable(
                "postgres", "the archive's tables are not created yet"
            ) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await self._drop()
            raise BackendUnavailable("postgres", str(exc).splitlines()[0]) from exc
        except OSError as exc:
            await self._drop()
            raise BackendUnavailable("postgres", str(exc)) from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # closing a broken connection: nothing more to learn
                log.debug("closing a broken PostgreSQL connection failed", exc_info=True)

    async def _writer(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect(self.timeout_s)
        return self._conn

    # ------------------------------------------------------------------ writing

    async def save(self, record: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> bool:
        """Write one ended incident and its timeline, in one transaction; idempotent.

        The incident row is keyed by its id: written again, it is replaced by a newer
        version of the record and left alone otherwise (False), never doubled. Events
        are keyed by their stream id, so an event written twice is written once.
        ``events``: ``{"event_id", "type", "at", "data"}``. Returns whether the incident
        row was written.
        """
        iid = str(record["id"])
        event_rows = [
            (iid, e["event_id"], e["type"], _ts(e["at"]), Jsonb(e["data"])) for e in events
        ]
        async with self._lock, self._errors():
            conn = await self._writer()
            async with conn.transaction():
                # Two archivers on one incident (several engines): one after the other.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (iid,))
                cur = await conn.execute("SELECT version FROM incidents WHERE id = %s", (iid,))
                found = await cur.fetchone()
                written = found is None or int(found[0]) < int(record.get("version", 0))
                if written:
                    await self._write_incident(conn, record)
                if event_rows:
                    async with conn.cursor() as c:
                        await c.executemany(
                            "INSERT INTO events (incident_id, event_id, type, at, data) "
                            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                            event_rows,
                        )
        return written

    async def _write_incident(
        self, conn: psycopg.AsyncConnection[Any], r: Mapping[str, Any]
    ) -> None:
        iid = r["id"]
        await conn.execute(
            """
            INSERT INTO incidents (id, kind, priority, state, lat, lon, cell_id, subdistrict,
                address, description, responders_needed, skills, reported_at, received_at,
                first_alert_at, first_accept_at, first_arrival_at, first_verified_at,
                escalated_at, escalation_reason, ended_at, end_reason, waves, version,
                record, merged_into, archived_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
            ON CONFLICT (id) DO UPDATE SET
                kind = EXCLUDED.kind, priority = EXCLUDED.priority, state = EXCLUDED.state,
                lat = EXCLUDED.lat, lon = EXCLUDED.lon, cell_id = EXCLUDED.cell_id,
                subdistrict = EXCLUDED.subdistrict,
                address = EXCLUDED.address, description = EXCLUDED.description,
                responders_needed = EXCLUDED.responders_needed, skills = EXCLUDED.skills,
                reported_at = EXCLUDED.reported_at, received_at = EXCLUDED.received_at,
                first_alert_at = EXCLUDED.first_alert_at,
                first_accept_at = EXCLUDED.first_accept_at,
                first_arrival_at = EXCLUDED.first_arrival_at,
                first_verified_at = EXCLUDED.first_verified_at,
                escalated_at = EXCLUDED.escalated_at,
                escalation_reason = EXCLUDED.escalation_reason,
                ended_at = EXCLUDED.ended_at, end_reason = EXCLUDED.end_reason,
                waves = EXCLUDED.waves, version = EXCLUDED.version,
                record = EXCLUDED.record, merged_into = EXCLUDED.merged_into,
                archived_at = now()
            """,
            (
                iid,
                r["kind"],
                r["priority"],
                r["state"],
                r["lat"],
                r["lon"],
                r.get("cell_id", ""),
                r.get("subdistrict") or None,  # none configured: NULL, the group null
                r.get("address", ""),
                r.get("description", ""),
                r["responders_needed"],
                list(r.get("skills", [])),
                _ts(r["reported_at"]),
                _ts(r["received_at"]),
                _ts(r.get("first_alert_at")),
                _ts(r.get("first_accept_at")),
                _ts(r.get("first_arrival_at")),
                # Records stored before verified arrivals: the arrival was the verified one.
                _ts(r.get("first_verified_at", r.get("first_arrival_at"))),
                _ts(r.get("escalated_at")),
                r.get("escalation_reason", ""),
                _ts(r.get("ended_at") or r["received_at"]),
                r.get("end_reason", ""),
                r.get("wave", 0),
                r.get("version", 0),
                Jsonb(dict(r)),
                r.get("merged_into") or None,  # duplicate reports: NULL unless merged
            ),
        )
        await conn.execute("DELETE FROM responders WHERE incident_id = %s", (iid,))
        await conn.execute("DELETE FROM alerts WHERE incident_id = %s", (iid,))
        async with conn.cursor() as c:
            await c.executemany(
                "INSERT INTO responders (incident_id, alert_id, volunteer_id, role, eta_s, "
                "distance_m, accepted_at, arrived_at, verified_at, released_at, overdue) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        iid,
                        x["alert_id"],
                        x["volunteer_id"],
                        x.get("role", "primary"),
                        x["eta_s"],
                        x.get("distance_m", 0.0),
                        _ts(x["accepted_at"]),
                        _ts(x.get("arrived_at")),
                        _ts(x.get("verified_at", x.get("arrived_at"))),
                        _ts(x.get("released_at")),
                        bool(x.get("overdue", False)),
                    )
                    for x in r.get("responders", [])
                ],
            )
            await c.executemany(
                "INSERT INTO alerts (incident_id, alert_id, volunteer_id, wave, status, "
                "sent_at, expires_at, answered_at, distance_m, eta_s, assigned_by) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        iid,
                        a["alert_id"],
                        a["volunteer_id"],
                        a["wave"],
                        a["status"],
                        _ts(a["sent_at"]),
                        _ts(a["expires_at"]),
                        _ts(a.get("answered_at")),
                        a["distance_m"],
                        a["eta_s"],
                        a.get("assigned_by"),
                    )
                    for a in r.get("alerts", [])
                ],
            )

    # ------------------------------------------------------------------ reading

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of its own for one read: reports never wait behind the writer.

        One snapshot for all its statements (repeatable read): a report's groups and its
        total count the same incidents, even while the writer commits between them."""
        async with self._errors():
            conn = await self._connect(self.report_timeout_s)
            try:
                await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
                await conn.set_read_only(True)
                yield conn
            finally:
                await conn.close()

    async def report(
        self, *, start: float, end: float, by: str, target_s: float, now: float
    ) -> tuple[list[tuple[str | None, Counts]], Counts]:
        """(counts by group, sorted by group; counts of the whole period), from SQL."""
        params = {
            "start": _ts(start),
            "end": _ts(end),
            "now": _ts(now),
            "target": target_s,
            "tz": _tz_interval(),
        }
        by_group = _REPORT_SQL.format(
            group=_GROUP_SQL[by], select_group="grp", group_by="GROUP BY grp ORDER BY grp"
        )
        whole = _REPORT_SQL.format(group="NULL", select_group="NULL", group_by="")
        async with self._reader() as conn:
            # Built from this module's own constants only, never from the query.
            cur = await conn.execute(by_group.encode(), params)
            rows = await cur.fetchall()
            cur = await conn.execute(whole.encode(), params)
            total = await cur.fetchone()
        assert total is not None
        return [(r[0], _counts(r[1:])) for r in rows], _counts(total[1:])

    async def misses(
        self, *, start: float, end: float, target_s: float, now: float, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """(one page of the misses, oldest report first; the count of each reason)."""
        params = {
            "start": _ts(start),
            "end": _ts(end),
            "now": _ts(now),
            "target": target_s,
            "limit": limit,
            "offset": offset,
        }
        page_sql = _MISSES_SQL + (
            "SELECT id, kind, priority, extract(epoch FROM reported_at)::float8, cell_id, "
            "subdistrict, address, reason, time_s, escalated FROM missed "
            "ORDER BY reported_at, id LIMIT %(limit)s OFFSET %(offset)s"
        )
        count_sql = _MISSES_SQL + "SELECT reason, count(*) FROM missed GROUP BY reason"
        async with self._reader() as conn:
            cur = await conn.execute(page_sql.encode(), params)
            rows = await cur.fetchall()
            cur = await conn.execute(count_sql.encode(), params)
            counts = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
        page = [
            report.miss(
                iid=r[0],
                kind=r[1],
                priority=int(r[2]),
                reported_at=float(r[3]),
                cell=r[4],
                subdistrict=r[5],
                address=r[6],
                reason=r[7],
                time_s=None if r[8] is None else float(r[8]),
                escalated=bool(r[9]),
            )
            for r in rows
        ]
        return page, counts

    async def record(self, incident_id: str) -> dict[str, Any] | None:
        """An archived incident's record as Redis held it; None if not archived."""
        async with self._reader() as conn:
            cur = await conn.execute("SELECT record FROM incidents WHERE id = %s", (incident_id,))
            found = await cur.fetchone()
        return None if found is None else dict(found[0])

    async def incident_ids(self) -> list[str]:
        """Every archived incident's id, oldest report first (tests, audits)."""
        async with self._reader() as conn:
            cur = await conn.execute("SELECT id FROM incidents ORDER BY reported_at, id")
            return [str(r[0]) for r in await cur.fetchall()]

    async def counts(self) -> dict[str, int]:
        """Rows per table (tests, audits)."""
        out: dict[str, int] = {}
        async with self._reader() as conn:
            for table in ("incidents", "responders", "alerts", "events"):
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                cur = await conn.execute(query)
                found = await cur.fetchone()
                out[table] = int(found[0]) if found else 0
        return out

    async def events(self, incident_id: str) -> list[str]:
        """The stream ids of an archived incident's events, in order (tests, audits)."""
        async with self._reader() as conn:
            cur = await conn.execute(
                # A stream id is "<ms>-<seq>": ordered as two numbers, not as text
                # ("…-10" after "…-9": one call logs a report's dozen events in one ms).
                "SELECT event_id FROM events WHERE incident_id = %s ORDER BY "
                "split_part(event_id, '-', 1)::bigint, split_part(event_id, '-', 2)::bigint",
                (incident_id,),
            )
            return [str(r[0]) for r in await cur.fetchall()]


def _tz_interval() -> str:
    offset = LOCAL_TZ.utcoffset(None)
    minutes = round(offset.total_seconds() / 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _counts(values: Sequence[Any]) -> Counts:
    return Counts(
        incidents=int(values[0]),
        needed=int(values[1]),
        decided=int(values[2]),
        within_target=int(values[3]),
        reached=int(values[4]),
        p50_s=None if values[5] is None else float(values[5]),
        p90_s=None if values[6] is None else float(values[6]),
        escalated=int(values[7]),
        alerts=int(values[8]),
    )


def events_of(stored: Iterable[StoredEvent]) -> list[dict[str, Any]]:
    """Events of the log as `Archive.save` takes them."""
    return [{"event_id": e.event_id, "type": e.type, "at": e.at, "data": e.data} for e in stored]
