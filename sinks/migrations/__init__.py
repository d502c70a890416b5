"""Alembic migrations of the results database, run programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

HERE = Path(__file__).parent


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at these migrations and bound to ``engine``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.attributes["engine"] = engine
    return cfg


def run_migrations(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (idempotent: an up-to-date database is left alone)."""
    command.upgrade(alembic_config(engine), revision)
