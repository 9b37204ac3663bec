"""Duplicate reports: the incident a merged report was merged into.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

``merged_into`` is the id of the incident an operator merged this one into (it is then
cancelled, so out of every figure's denominator); NULL for every other incident. The
record (``record``) holds it too; the column makes "which reports were duplicates, of
what" one indexed query. Rows archived before are filled from their records.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("incidents", sa.Column("merged_into", sa.Text))
    op.execute(
        "UPDATE incidents SET merged_into = record->>'merged_into' WHERE record ? 'merged_into'"
    )
    op.create_index(
        "incidents_merged_into",
        "incidents",
        ["merged_into"],
        postgresql_where=sa.text("merged_into IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("incidents_merged_into", table_name="incidents")
    op.drop_column("incidents", "merged_into")
