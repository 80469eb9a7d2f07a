"""Shared test setup: jobkeeper's own fixtures (a real Postgres per test module)."""

pytest_plugins = ["jobkeeper.testing"]
