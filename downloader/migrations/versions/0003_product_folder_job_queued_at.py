"""product.folder: each product's safe, case-unique folder name; job.queued_at: claim order

Existing products get their folder names here, job by job in product order (the same
derivation new jobs get at creation, downloader.naming); existing jobs keep their place in
the queue (queued_at = created_at). Both columns stay nullable: making them NOT NULL would
rebuild the tables on SQLite, which its foreign keys refuse; readers fall back instead
(folder_name(number), created_at).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from downloader.naming import unique_folder_names

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BATCH = 5_000  # product rows updated per executemany


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queued_at", sa.Float(), nullable=True))
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.add_column(sa.Column("folder", sa.String(length=200), nullable=True))

    conn = op.get_bind()
    conn.execute(sa.text("UPDATE job SET queued_at = created_at"))
    _fill_folders(conn)


def _fill_folders(conn: sa.Connection) -> None:
    """Name every existing product's folder, one job at a time (a job's names depend on
    each other; different jobs' do not)."""
    job_ids = conn.execute(sa.text("SELECT DISTINCT job_id FROM product")).scalars().all()
    update = sa.text("UPDATE product SET folder = :folder WHERE id = :id")
    for job_id in job_ids:
        rows = conn.execute(
            sa.text("SELECT id, number FROM product WHERE job_id = :job ORDER BY position"),
            {"job": job_id},
        ).all()
        folders = unique_folder_names(number for _, number in rows)
        values = [
            {"id": product_id, "folder": folder}
            for (product_id, _), folder in zip(rows, folders, strict=True)
        ]
        for start in range(0, len(values), _BATCH):
            conn.execute(update, values[start : start + _BATCH])


def downgrade() -> None:
    with op.batch_alter_table("product", schema=None) as batch_op:
        batch_op.drop_column("folder")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("queued_at")
