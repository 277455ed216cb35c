"""Near-duplicate hashes and product numbers of up to 128 characters

image.dhash: the decoded picture's 64-bit difference hash (VERIFY_IMAGES=full), kept as a
signed BIGINT (the same 64 bits, downloader/near_duplicates.py), to find the same picture at
two sizes within a product.
product.number: VARCHAR(64) -> VARCHAR(128) (issue 23: any product number of 1-128
characters). Altered only where the database enforces the length (PostgreSQL). SQLite stores
any length whatever the declared VARCHAR, and changing a declared type there means Alembic's
batch mode rebuilding the table (copy, drop, rename), which the foreign keys from image and
product rows refuse while the connection enforces them; an upgraded SQLite file so keeps the
declared VARCHAR(64) and accepts 128 characters all the same (a new file gets VARCHAR(128)
from the models).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _enforces_varchar_length() -> bool:
    return op.get_bind().dialect.name != "sqlite"


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dhash", sa.BigInteger(), nullable=True))
    if _enforces_varchar_length():
        op.alter_column(
            "product",
            "number",
            existing_type=sa.String(length=64),
            type_=sa.String(length=128),
            existing_nullable=False,
        )


def downgrade() -> None:
    if _enforces_varchar_length():
        # fails if a product number is longer than 64 characters: nothing is cut silently
        op.alter_column(
            "product",
            "number",
            existing_type=sa.String(length=128),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    with op.batch_alter_table("image", schema=None) as batch_op:
        batch_op.drop_column("dhash")
