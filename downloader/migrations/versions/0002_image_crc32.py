"""image.crc32: the stored bytes' CRC-32, kept so ZIPs need not compute it

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("crc32", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.drop_column("crc32")
