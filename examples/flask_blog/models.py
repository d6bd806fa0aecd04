"""The blog's models: tables ``user`` and ``blog_post``, named by ``Base``."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .database import Base


class User(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80), unique=True)

    posts: Mapped[list[BlogPost]] = relationship(back_populates="author")

    def to_json(self) -> dict[str, t.Any]:
        return {"id": self.id, "name": self.name}


class BlogPost(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(sa.ForeignKey(User.id), index=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str] = mapped_column(sa.Text, default="")

    author: Mapped[User] = relationship(back_populates="posts")

    def to_json(self) -> dict[str, t.Any]:
        return {
            "id": self.id,
            "author": self.author.name,
            "title": self.title,
            "body": self.body,
        }
