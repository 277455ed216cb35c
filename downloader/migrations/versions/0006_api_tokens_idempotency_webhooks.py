"""The HTTP API: personal API tokens, idempotency keys, job webhooks

api_token: a person's bearer tokens (only the SHA-256 of the secret is kept), with a name,
created/last-used times, an optional expiry and the revocation time.
idempotency_key: the job a POST with an Idempotency-Key made, per owner (unique owner + key).
job: callback_url (the webhook target) and the webhook's delivery state.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08 01:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_JOB_COLUMNS = (
    ("callback_url", sa.String(length=2048)),
    ("webhook_status", sa.String(length=12)),
    ("webhook_attempts", sa.Integer()),
    ("webhook_error", sa.String(length=300)),
    ("webhook_sent_at", sa.Float()),
)


def upgrade() -> None:
    op.create_table(
        "api_token",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_token_owner", "api_token", ["owner"])
    op.create_index("ix_api_token_token_hash", "api_token", ["token_hash"], unique=True)
    op.create_table(
        "idempotency_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        for name, type_ in _JOB_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        for name, _ in reversed(_JOB_COLUMNS):
            batch_op.drop_column(name)
    op.drop_table("idempotency_key")
    op.drop_index("ix_api_token_token_hash", table_name="api_token")
    op.drop_index("ix_api_token_owner", table_name="api_token")
    op.drop_table("api_token")
