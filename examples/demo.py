"""A first look: sessions per thread, units of work, and what happens to the ones
nobody removed. SQLite by default; set DATABASE_URL for another database.

    python examples/demo.py
"""

from __future__ import annotations

import os
import tempfile
import threading

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from scoped_session import ScopedSession


def main() -> None:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/demo.db"
    engine = sa.create_engine(url, pool_size=20)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS demo_notes (owner TEXT)"))
        conn.execute(sa.text("DELETE FROM demo_notes"))
    Session = ScopedSession(sessionmaker(engine))
    pool = t_pool(engine)

    @Session.scope(commit=True)
    def job(n: int) -> None:
        Session.execute(sa.text("INSERT INTO demo_notes VALUES (:o)"), {"o": f"job {n}"})

    def forgetful() -> None:
        # Uses the session and never calls remove(): closed when the thread exits.
        Session.execute(sa.text("SELECT count(*) FROM demo_notes"))

    threads = [threading.Thread(target=job, args=(n,)) for n in range(8)]
    threads += [threading.Thread(target=forgetful) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()

    rows = Session.scalar(sa.text("SELECT count(*) FROM demo_notes"))
    Session.remove()
    stats = Session._stats
    print(f"rows committed by 8 jobs:          {rows}")
    print(f"sessions made:                     {stats.created}")
    print(f"closed by remove() or a unit:      {stats.removed}")
    print(f"closed at thread exit (no remove): {stats.reaped}")
    print(f"connections left checked out:      {pool.checkedout()}")
    engine.dispose()


def t_pool(engine: sa.Engine) -> sa.QueuePool:
    assert isinstance(engine.pool, sa.QueuePool)
    return engine.pool


if __name__ == "__main__":
    main()
