"""The application's own tables, as SQLAlchemy ORM models. ``workers`` is a name jobkeeper uses
too: jobkeeper's tables live in their own schema, so the application keeps its own."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person of the loan office, with the API token the application's own auth checks."""

    __tablename__ = "users"
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    token: Mapped[str] = mapped_column(sa.Text, unique=True)
    office: Mapped[str] = mapped_column(sa.Text)  # the tenant of its jobs
    underwriter: Mapped[bool] = mapped_column(sa.Boolean, default=False)


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    office: Mapped[str] = mapped_column(sa.Text)
    title: Mapped[str] = mapped_column(sa.Text)
    pages: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)


class Loan(Base):
    __tablename__ = "loans"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    office: Mapped[str] = mapped_column(sa.Text)
    applicant: Mapped[str] = mapped_column(sa.Text)
    amount: Mapped[Decimal] = mapped_column(sa.Numeric(12, 2))
    status: Mapped[str] = mapped_column(sa.Text, default="submitted")
    decided_by: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(sa.Text, nullable=True)


class Worker(Base):
    """The loan office's staff roster (not jobkeeper's worker processes)."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
