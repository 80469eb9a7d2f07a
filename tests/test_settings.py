"""Settings come from JOBKEEPER_* variables, and database URLs are accepted in both spellings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobkeeper.settings import Settings, asyncpg_dsn, sqlalchemy_url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5432/db",
        "postgres://u:p@h:5432/db",
        "postgresql+asyncpg://u:p@h:5432/db",
    ],
)
def test_database_url_spellings_normalise(url: str) -> None:
    assert sqlalchemy_url(url) == "postgresql+asyncpg://u:p@h:5432/db"
    assert asyncpg_dsn(url) == "postgresql://u:p@h:5432/db"


def test_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKEEPER_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("JOBKEEPER_CACHE_SIZE", "123")
    monkeypatch.setenv("JOBKEEPER_CACHE_TTL", "2.5")
    settings = Settings(_env_file=None)
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.cache_size == 123
    assert settings.cache_ttl == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOBKEEPER_DATABASE_URL", "mysql://u@h/db"),
        ("JOBKEEPER_CACHE_SIZE", "-1"),
        ("JOBKEEPER_CACHE_TTL", "-1"),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)
