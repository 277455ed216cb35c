"""What a catalogue needs per image, and the job's output options

image: colour mode, alpha, frame/page count, embedded ICC profile, EXIF orientation (the
whole-file check reads them); the converted output's format, size and dimensions (output
profiles: the stored original stays the verified source); warnings from marketplace checks
(JSON list); the input's extra columns (JSON object, carried to the manifest and the report).
job: its output options (naming template, layout, conversion, checks) as JSON.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_IMAGE_COLUMNS = (
    ("color_mode", sa.String(length=16)),
    ("has_alpha", sa.Boolean()),
    ("frames", sa.Integer()),
    ("icc_profile", sa.String(length=100)),
    ("orientation", sa.Integer()),
    ("output_format", sa.String(length=8)),
    ("output_bytes", sa.BigInteger()),
    ("output_width", sa.Integer()),
    ("output_height", sa.Integer()),
    ("warnings", sa.Text()),
    ("extra", sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table("image", schema=None) as batch_op:
        for name, type_ in _IMAGE_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("options", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("options")
    with op.batch_alter_table("image", schema=None) as batch_op:
        for name, _ in reversed(_IMAGE_COLUMNS):
            batch_op.drop_column(name)
