"""Tests of ``starlette_notes`` with ``starlette_conftest.py`` as their conftest."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.testclient import TestClient
from starlette_notes import Note, Session


@pytest.mark.asyncio
async def test_add_note(async_client: httpx.AsyncClient) -> None:
    assert (await async_client.post("/notes/hi")).json() == {"notes": 1}  # committed
    assert (await async_client.get("/notes")).json() == ["hi"]


@pytest.mark.asyncio
async def test_starts_empty(
    async_client: httpx.AsyncClient, scoped_session_async_transaction: AsyncConnection
) -> None:
    async with Session.scope(commit=True):  # the test's own writes join the transaction
        Session.add(Note(text="seed"))
    assert (await async_client.get("/notes")).json() == ["seed"]


def test_add_note_with_testclient(client: TestClient) -> None:
    assert client.post("/notes/one").json() == {"notes": 1}
    assert client.get("/notes").json() == ["one"]


def test_rolled_back(client: TestClient) -> None:
    assert client.get("/notes").json() == []
