"""The README's example and the demo run as a new user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "sqlalchemy", reason="SQLAlchemy is not installed: the README's examples and the demo use it"
)

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_readme_asyncio_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    pytest.importorskip("greenlet")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## asyncio and ASGI") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "async_example.py"
    script.write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "10"


def demo_table(stdout: str) -> dict[str, tuple[str, str]]:
    """The demo's table: each row's label mapped to (FlaskScopedSession, usual)."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 3:
            rows[cells[0]] = (cells[1], cells[2])
    return rows


@pytest.mark.slow
def test_demo_runs(tmp_path: Path) -> None:
    pytest.importorskip("flask", reason="the demo runs a Flask app (extra 'flask')")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--requests", "100", "--clients", "8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Nothing the servers log reaches the terminal; progress goes to stderr,
    # a line per quarter when it is not a terminal.
    assert "Traceback" not in result.stdout + result.stderr
    assert "127.0.0.1 - -" not in result.stdout + result.stderr
    assert len(result.stderr.splitlines()) == 8, result.stderr

    table = demo_table(result.stdout)
    ours = {label: cells[0] for label, cells in table.items()}
    # The mix is fixed: of every 10 requests, 2 add a note and 1 is a feed
    # that its client hangs up on.
    assert ours["requests answered as expected"] == "100 of 100"
    assert ours["sessions opened"] == ours["sessions closed"] == "100"
    assert ours["connections left checked out"] == "0"
    assert ours["rows written / 201 responses"] == "20 / 20"
    assert ours["streams cut short by a hang-up"] == "10 of 10"
    # The usual wiring's numbers are measured and printed beside ours.
    usual = {label: cells[1] for label, cells in table.items()}
    assert re.fullmatch(r"\d+ of 100", usual["requests answered as expected"])
    assert re.fullmatch(r"\d+", usual["connections left checked out"])
    # A reading of the table in words comes after it.
    assert result.stdout.rstrip().endswith("it is not a benchmark.")
