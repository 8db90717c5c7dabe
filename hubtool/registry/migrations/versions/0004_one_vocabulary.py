"""One vocabulary for kinds: the expert kind once called "full-delta" is "full" (as `--method full`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE experts SET kind = 'full' WHERE kind = 'full-delta'")


def downgrade() -> None:
    op.execute("UPDATE experts SET kind = 'full-delta' WHERE kind = 'full'")
