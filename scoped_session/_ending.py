"""How sessions are ended: the one failure policy every integration uses.

Ending a set of sessions (a request's, a job's, a unit's, ``remove_all()``'s):

1. commit each in order, when asked and the work raised nothing; after a failed
   commit the ones after it are not committed (their close rolls them back);
2. close every one, whatever failed before;
3. log every failure to the ``scoped_session`` logger, with ``exc_info``;
4. raise: nothing when the work's own exception is given (the caller re-raises
   that one, which is never hidden); else the failure itself when there is one,
   a :class:`BaseExceptionGroup` of them when several (an :class:`ExceptionGroup`
   when all are exceptions).

This is not a two-phase commit: sessions committed before a failed one stay
committed. :func:`end_sessions` performs the steps; :func:`end_sessions_async`
awaits those that return awaitables, or hands each to a runner (the ASGI
middleware runs a sync session's on a worker thread).

Every integration ends its units here, with one call: :func:`end_units` (or
:func:`end_units_async`) ends a request's, job's or task's cells, one per registry,
and :func:`commit_units` (:func:`commit_units_async`) commits them without ending
them, before a response's status goes out.

Callers pass every argument after the first by keyword. The drivers' parameters are
not keyword-only all the same: Python looks a missing keyword-only argument's default
up in a dict at every call, where a positional one's is read from a tuple, and every
request and job ends here (about 20 ns a call on 3.12).
"""

from __future__ import annotations

import logging
import typing as t

if t.TYPE_CHECKING:
    from ._cells import Cell

__all__ = [
    "Ending",
    "commit_units",
    "commit_units_async",
    "end_sessions",
    "end_scope_cell",
    "end_sessions_async",
    "end_units",
    "end_units_async",
    "raise_failures",
]

logger = logging.getLogger("scoped_session")

Runner = t.Callable[[t.Callable[[], object]], t.Awaitable[object]]


class Ending:
    """What failed so far while ending some sessions, and what that decides.

    The drivers below make one at the first failure, report every failure to
    :meth:`failed`, and call :meth:`finish`, which applies the policy.

    :param error: the work's own exception: nothing is committed and no failure
        is raised, only logged.
    :param where: what the sessions belonged to, for the log: a string, or an
        object whose ``str()`` says it ("GET /notes"), formatted only when logged.
    """

    __slots__ = ("error", "failures", "where")

    def __init__(self, error: BaseException | None, where: object) -> None:
        self.error = error
        self.where = where
        self.failures: list[BaseException] = []

    def failed(self, step: str, exc: BaseException) -> None:
        """The ``step`` (``"commit"`` or ``"close"``) of a session raised ``exc``."""
        if step == "commit":
            logger.error(
                "Committing a session failed for %s; the ones after it were not committed.",
                self.where,
                exc_info=exc,
            )
        else:
            logger.error("Closing a session failed for %s.", self.where, exc_info=exc)
        self.failures.append(exc)

    def finish(self) -> None:
        """Raise what the policy says (see the module documentation)."""
        if self.failures and self.error is None:
            raise_failures(self.failures, self.where)


def raise_failures(failures: t.Sequence[BaseException], where: object) -> None:
    """Raise the one failure, a group of several, or nothing."""
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise BaseExceptionGroup(f"ending {len(failures)} sessions failed for {where}", failures)


def end_sessions(
    sessions: t.Iterable[t.Any],
    commit: bool = False,
    error: BaseException | None = None,
    where: object = "a unit of work",
    close: bool = True,
    if_begun: bool = False,
) -> int:
    """Commit (when asked), close and report ``sessions`` by the policy; returns
    how many were committed.

    :param if_begun: commit only a session that may hold work, after an earlier
        commit: one that began a transaction since, or cannot say. A SQLAlchemy
        session that did not (``in_transaction()`` is false) holds none: any
        change begins one (an ``add()``, a ``delete()``, a changed attribute, a
        query). Committing it anyway would begin and commit an empty transaction
        (about 14 us on SQLite) and run its commit events again.
    """
    # Every request and job ends here: the Ending is made only once something
    # fails, so that the usual end allocates nothing.
    committing = commit and error is None
    committed = 0
    ending: Ending | None = None
    for session in sessions:
        if committing:
            try:
                begun = True
                if if_begun:
                    try:
                        begun = session.in_transaction()
                    except AttributeError:  # not SQLAlchemy's: it may hold work
                        begun = True
                if begun:
                    session.commit()
                    committed += 1
            except BaseException as exc:
                ending = ending or Ending(error, where)
                ending.failed("commit", exc)
                committing = False
        if close:
            try:
                session.close()
            except BaseException as exc:
                ending = ending or Ending(error, where)
                ending.failed("close", exc)
        elif not committing:
            break
    if ending is not None:
        ending.finish()
    return committed


async def end_sessions_async(
    sessions: t.Iterable[t.Any],
    commit: bool = False,
    error: BaseException | None = None,
    where: object = "a unit of work",
    close: bool = True,
    run: Runner | None = None,
) -> int:
    """:func:`end_sessions` for async sessions: the same steps, each awaited
    (a step that returns ``None``, a sync session's, is done).

    :param run: performs a step instead (called with the bound method, it returns
        an awaitable): the ASGI middleware runs a sync session's on a thread.
    """
    committing = commit and error is None
    committed = 0
    ending: Ending | None = None
    for session in sessions:
        if committing:
            try:
                step = session.commit() if run is None else run(session.commit)
                if step is not None:
                    await step
            except BaseException as exc:
                ending = ending or Ending(error, where)
                ending.failed("commit", exc)
                committing = False
            else:
                committed += 1
        if close:
            try:
                step = session.close() if run is None else run(session.close)
                if step is not None:
                    await step
            except BaseException as exc:
                ending = ending or Ending(error, where)
                ending.failed("close", exc)
        elif not committing:
            break
    if ending is not None:
        ending.finish()
    return committed


def _held(cells: t.Iterable[Cell]) -> list[t.Any]:
    """The sessions the cells hold. A loop, not a comprehension (a call more on
    3.11): a worker's job with commit=True comes here."""
    sessions = []
    for cell in cells:
        session = cell.session
        if session is not None:
            sessions.append(session)
    return sessions


def end_units(
    cells: t.Sequence[Cell],
    commit: bool,
    where: object,
    error: BaseException | None = None,
    reaped: bool = False,
    keep_open: bool = False,
    if_begun: bool = False,
) -> int:
    """End units of work (one cell each, from ``open_unit()``) by the policy: commit
    their sessions in order (when ``commit`` and no ``error``), close all, raise the
    failure or a group of them unless ``error`` is given. Returns how many were
    committed.

    :param where: what the units were for, for the log ("GET /notes").
    :param reaped: a backstop ends them (counted as reaped).
    :param keep_open: end only the units' sessions; the units stay open (a worker
        thread's units between jobs).
    :param if_begun: commit only the sessions that may hold work (see
        :func:`end_sessions`).
    """
    if len(cells) == 1:  # one registry, the usual case: no list to gather
        [cell] = cells
        session = cell.take_to_close() if keep_open else cell.detach(reaped)
        if session is None:
            return 0
        found: t.Sequence[t.Any] = (session,)
    else:
        found = []
        for cell in cells:
            session = cell.take_to_close() if keep_open else cell.detach(reaped)
            if session is not None:
                found.append(session)
        if not found:
            return 0
    return end_sessions(found, commit=commit, error=error, where=where, if_begun=if_begun)


def end_scope_cell(
    cell: Cell, *, commit: bool, error: BaseException | None = None, where: object
) -> int:
    """End a scope's own cell when the scope is over (a Flask application context):
    its session and those of the cells it shadows (units left open in it), by the
    policy, innermost first. Returns how many were committed."""
    if cell.prev is None:  # the usual end: one cell, no list
        session = cell.take_to_close()
        if session is None:
            return 0
        return end_sessions((session,), commit=commit, error=error, where=where)
    sessions = []
    found: Cell | None = cell
    while found is not None:
        session = found.take_to_close()
        if session is not None:
            sessions.append(session)
        found = found.prev
    if not sessions:
        return 0
    return end_sessions(sessions, commit=commit, error=error, where=where)


def commit_units(cells: t.Iterable[Cell], *, where: object) -> None:
    """Commit the units' sessions in order, by the policy, leaving them open for the
    caller to end (where a failed commit rolls the rest back)."""
    sessions = _held(cells)
    if sessions:
        end_sessions(sessions, commit=True, close=False, where=where)


async def end_units_async(
    cells: t.Iterable[Cell],
    commit: bool,
    where: object,
    error: BaseException | None = None,
    run: Runner | None = None,
) -> int:
    """:func:`end_units` for units whose sessions' steps are awaited (or run by
    ``run``, see :func:`end_sessions_async`)."""
    sessions = []
    for cell in cells:  # a loop, not a comprehension: no function call on 3.11
        session = cell.detach()
        if session is not None:
            sessions.append(session)
    if not sessions:
        return 0
    return await end_sessions_async(sessions, commit=commit, error=error, where=where, run=run)


async def commit_units_async(
    cells: t.Iterable[Cell], *, where: object, run: Runner | None = None
) -> None:
    """:func:`commit_units`, each step awaited (or run by ``run``)."""
    sessions = _held(cells)
    if sessions:
        await end_sessions_async(sessions, commit=True, close=False, where=where, run=run)
