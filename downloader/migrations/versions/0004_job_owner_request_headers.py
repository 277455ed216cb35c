"""job.owner: who the job belongs to; job.request_headers: the job's own request headers

`owner` is the signed-in person's e-mail (or the CLI's `--owner`); jobs made before this
revision belong to nobody (NULL): admins see them, and everyone does in single-user mode.
`request_headers` holds the job's extra request headers (Referer, Cookie, User-Agent,
Authorization; optionally per host) as JSON; it is never shown to anyone but the owner and is
deleted with the job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("request_headers", sa.Text(), nullable=True))
        batch_op.create_index("ix_job_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_owner")
        batch_op.drop_column("request_headers")
        batch_op.drop_column("owner")
