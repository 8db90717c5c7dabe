"""Task categories, and the value dtype of each expert (backfilled from its blob's header).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("category", sa.String))
    op.add_column("experts", sa.Column("value_dtype", sa.String))
    _backfill_value_dtypes()


def _backfill_value_dtypes() -> None:
    """value_dtype of each existing expert from its blob's header (stdlib-only reader). The catalog
    hands its blob store over (hubtool.registry.migrate); a blob that is missing or unreadable leaves
    NULL, which `hub show` answers from the header again."""
    from hubtool import paths
    from hubtool.errors import HubError
    from hubtool.format.header import read_header

    blobs = Path(op.get_context().config.attributes.get("blobs") or paths.blobs_dir())
    conn = op.get_bind()
    experts = sa.table("experts", sa.column("id", sa.Integer), sa.column("blob", sa.String),
                       sa.column("value_dtype", sa.String))  # fmt: skip
    dtypes: dict[str, str | None] = {}  # blob location -> value dtype (versions may share a blob)
    for expert_id, location in conn.execute(sa.select(experts.c.id, experts.c.blob)).all():
        if location not in dtypes:
            try:
                dtypes[location] = read_header(blobs / location)["value_dtype"]
            except (HubError, OSError):
                dtypes[location] = None
        if dtypes[location] is not None:
            conn.execute(
                sa.update(experts).where(experts.c.id == expert_id).values(value_dtype=dtypes[location])
            )


def downgrade() -> None:
    op.drop_column("experts", "value_dtype")
    op.drop_column("tasks", "category")
