"""Tests of ``fastapi_notes`` with ``fastapi_conftest.py`` as their conftest."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from fastapi_notes import COUNT, DB
from sqlalchemy.ext.asyncio import AsyncConnection


@pytest.mark.anyio
async def test_add_note(async_client: httpx.AsyncClient) -> None:
    assert (await async_client.post("/notes/hi")).json() == {"notes": 1}  # committed
    assert (await async_client.get("/notes")).json() == ["hi"]


@pytest.mark.anyio
async def test_starts_empty(
    async_client: httpx.AsyncClient, scoped_session_async_transaction: AsyncConnection
) -> None:
    # Rolled back after test_add_note: every test starts with no notes.
    assert (await async_client.get("/notes")).json() == []
    async with DB.scope(commit=True):  # the test's own writes join the transaction too
        assert await DB.scalar(COUNT) == 0


def test_add_note_with_testclient(client: TestClient) -> None:
    assert client.post("/notes/one").json() == {"notes": 1}
    assert client.post("/notes/two").json() == {"notes": 2}
    assert client.get("/notes").json() == ["one", "two"]


def test_sync_endpoint(client: TestClient) -> None:
    # The sync session has a test transaction of its own (a sync endpoint cannot
    # use the async driver's connection): it sees none of the async side's rows.
    assert client.post("/notes/async").status_code == 201
    assert client.get("/stats").json() == {"notes": 0}
