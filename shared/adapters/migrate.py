"""Running Alembic from the CLI and the tests, without an alembic.ini on the path."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig

# Inside the package (shared/adapters/migrations/), so an installed wheel has them wherever it runs.
MIGRATIONS_DIR = Path(str(files("shared.adapters") / "migrations"))


def alembic_config(database_url: str | None = None) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if database_url:
        # ConfigParser interpolation would choke on '%' in a password.
        cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
