"""The archive of ended incidents: incidents, their responders, alerts and timelines.

Revision ID: 0001
Revises:
Create Date: 2026-12-20

One row per ended incident (``id``, the engine's incident id, is the key: writing an
incident again replaces it, never adds a second), with the four measured times as
columns and the whole record as Redis held it in ``record``; its responders and alerts
as rows; its event log (``events``, keyed by the Redis stream id) as rows.
``subdistrict`` stays empty until a deployment has subdistrict boundaries.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("lat", sa.Float(53), nullable=False),
        sa.Column("lon", sa.Float(53), nullable=False),
        sa.Column("cell_id", sa.Text, nullable=False),
        sa.Column("subdistrict", sa.Text),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("responders_needed", sa.SmallInteger, nullable=False),
        sa.Column("skills", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column("reported_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("first_alert_at", _TS),
        sa.Column("first_accept_at", _TS),
        sa.Column("first_arrival_at", _TS),
        sa.Column("first_verified_at", _TS),
        sa.Column("escalated_at", _TS),
        sa.Column("escalation_reason", sa.Text, nullable=False),
        sa.Column("ended_at", _TS, nullable=False),
        sa.Column("end_reason", sa.Text, nullable=False),
        sa.Column("waves", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("record", postgresql.JSONB, nullable=False),
        sa.Column("archived_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("incidents_reported_at", "incidents", ["reported_at"])
    op.create_index("incidents_ended_at", "incidents", ["ended_at"])
    op.create_table(
        "responders",
        sa.Column(
            "incident_id",
            sa.Text,
            sa.ForeignKey("incidents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alert_id", sa.Text, primary_key=True),
        sa.Column("volunteer_id", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("eta_s", sa.Float(53), nullable=False),
        sa.Column("distance_m", sa.Float(53), nullable=False),
        sa.Column("accepted_at", _TS, nullable=False),
        sa.Column("arrived_at", _TS),
        sa.Column("verified_at", _TS),
        sa.Column("released_at", _TS),
        sa.Column("overdue", sa.Boolean, nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column(
            "incident_id",
            sa.Text,
            sa.ForeignKey("incidents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("alert_id", sa.Text, primary_key=True),
        sa.Column("volunteer_id", sa.Text, nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("sent_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("answered_at", _TS),
        sa.Column("distance_m", sa.Float(53), nullable=False),
        sa.Column("eta_s", sa.Float(53), nullable=False),
        sa.Column("assigned_by", sa.Text),
    )
    op.create_table(
        "events",
        sa.Column(
            "incident_id",
            sa.Text,
            sa.ForeignKey("incidents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("event_id", sa.Text, primary_key=True),  # the Redis stream id
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("data", postgresql.JSONB, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("alerts")
    op.drop_table("responders")
    op.drop_table("incidents")
