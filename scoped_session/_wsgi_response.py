"""The WSGI middleware's response iterables and its commit gate.

:class:`Response` wraps a streamed body and ends the request's units when the
server closes it (from any thread), or at once when the body raises.
:class:`CommittingResponse` and :class:`Gate` hold the app's status until its
sessions are committed (``commit=True``). ``scoped_session.wsgi`` is the public
module; this one is its implementation.
"""

from __future__ import annotations

import logging
import typing as t
import warnings

from ._cells import Cell
from ._ending import commit_units, end_units

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = [
    "CommittingResponse",
    "Gate",
    "Request",
    "Response",
    "Veto",
    "close_quietly",
    "roll_back",
]

logger = logging.getLogger("scoped_session")

Veto = t.Callable[["WSGIEnvironment", str, list[tuple[str, str]]], object]
Units = tuple[Cell, ...]


class Request(tuple["WSGIEnvironment", str]):
    """Names a request in messages ("GET /notes"; with a prefix, "the request GET
    /notes"), formatted only when one is written: ``Request((environ, prefix))``.
    A tuple, made without a call of Python code: every request makes one."""

    __slots__ = ()

    @property
    def environ(self) -> WSGIEnvironment:
        return self[0]

    def __str__(self) -> str:
        environ, prefix = self
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return f"{prefix}{environ.get('REQUEST_METHOD', '?')} {path}"


def roll_back(units: Units, where: Request, error: BaseException) -> None:
    """Roll back and end every unit after the request failed with ``error``; their
    failures are logged, never raised, so that the request's own error propagates."""
    end_units(units, commit=False, error=error, where=where)


def close_quietly(body: object) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.error("Closing the response iterable failed.", exc_info=True)


class Response:
    """The response iterable of a streamed body: ends the request's units when
    the server closes it, or at once when the body raises."""

    __slots__ = ("_body", "_next", "_units", "_where", "live")

    def __init__(
        self,
        body: t.Iterable[bytes],
        next_chunk: t.Callable[[], bytes],
        units: Units,
        where: Request,
    ) -> None:
        self._body = body
        self._next = next_chunk
        self._units = units
        self._where = where
        # A later request on the same slot is one of its own: it never joins or
        # ends these units, which this response ends.
        for cell in units:
            cell.handed = True
        # Popped exactly once, by whichever of close(), a failure or the
        # finalizer gets there first (list.pop is atomic).
        self.live = [True]

    def __iter__(self) -> Response:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = self._next()
        except StopIteration:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        return chunk

    def _fail(self, error: BaseException) -> None:
        """The body raised: close it and roll back now, not at ``close()``."""
        try:
            self.live.pop()
        except IndexError:
            return
        close_quietly(self._body)
        roll_back(self._units, self._where, error)

    def close(self) -> None:
        """Close the app's iterable, then end the request's units.

        The server calls this, from any thread; calling it again does nothing.
        """
        try:
            self.live.pop()
        except IndexError:
            return
        self._close(False)

    def _close(self, commit: bool, reaped: bool = False) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            try:
                close()
            except BaseException as exc:
                roll_back(self._units, self._where, exc)
                raise
        end_units(self._units, commit=commit, where=self._where, reaped=reaped)

    def __del__(self) -> None:
        if not self.live:
            return
        try:
            self.live.pop()
        except IndexError:
            return
        try:
            if any(not cell.ended for cell in self._units):
                message = (
                    f"The response to {Request((self._where.environ, ''))} was garbage collected"
                    " without close(); its database sessions were closed now (rolled"
                    " back). A WSGI server must call close() on the response iterable"
                    " (PEP 3333): use a server that does, or call close() on the"
                    " response where it is consumed."
                )
                # Logged as well: a ResourceWarning is hidden by default.
                logger.warning("%s", message)
                warnings.warn(message, ResourceWarning, source=self, stacklevel=1)
        finally:
            try:
                self._close(False, reaped=True)
            except Exception:
                logger.error("Ending a collected response's unit of work failed.", exc_info=True)


class CommittingResponse(Response):
    """A streamed body under ``commit=True``: its first chunk commits (or rolls
    back) before the status goes out; ``close()`` commits what the stream wrote
    when it ran to its end."""

    __slots__ = ("_finished", "_gate")

    def __init__(
        self,
        body: t.Iterable[bytes],
        next_chunk: t.Callable[[], bytes],
        units: Units,
        where: Request,
        gate: Gate,
    ) -> None:
        self._gate = gate
        self._finished = False
        super().__init__(body, next_chunk, units, where)

    def __next__(self) -> bytes:
        try:
            chunk = self._next()
        except StopIteration:
            self._finished = True
            if not self._gate.sent:
                self._flush()
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        if not self._gate.sent:
            self._flush()
        return chunk

    def _flush(self) -> None:
        try:
            self._gate.flush()
        except BaseException as exc:
            self._fail(exc)
            raise

    def close(self) -> None:
        """:meth:`Response.close`, committing what the stream wrote when it ran to
        its end: a body the server stopped reading (the client left) did not
        finish its work, and what it wrote is rolled back."""
        try:
            self.live.pop()
        except IndexError:
            return
        self._close(self._finished and self._gate.decision is True)


class Gate:
    """Holds the app's status until the sessions are committed (``commit=True``)."""

    __slots__ = (
        "_environ",
        "_start_response",
        "_units",
        "_veto",
        "_where",
        "_write",
        "decision",
        "exc_info",
        "headers",
        "sent",
        "status",
    )

    def __init__(
        self,
        veto: Veto | None,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        units: Units,
        where: Request,
    ) -> None:
        self._veto = veto
        self._environ = environ
        self._where = where
        self._start_response = start_response
        self._units = units
        self._write: t.Callable[[bytes], object] | None = None
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: OptExcInfo | None = None
        self.sent = False
        #: Whether the view's writes are committed: None until decided.
        self.decision: bool | None = None

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> t.Callable[[bytes], object]:
        """The ``start_response`` the app sees: records, sends nothing yet."""
        if exc_info is not None and exc_info[0] is None:
            exc_info = None
        if exc_info is not None:
            if self.sent:
                # Too late to change the status: the server re-raises the
                # app's error, as PEP 3333 asks.
                self._start_response(status, headers, exc_info)
        elif self.status is not None:
            raise AssertionError("start_response() was called a second time without exc_info.")
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` callable: the status goes out first."""
        if not self.sent:
            self.flush()
        if self._write is None:
            raise AssertionError("write() was called before start_response().")
        self._write(data)

    def decide(self) -> bool:
        """Whether to commit: a status below 400, no ``exc_info``, and the veto."""
        if self.decision is not None:
            return self.decision
        status = self.status
        ok = status is not None and self.exc_info is None and status_code(status) < 400
        if ok and self._veto is not None:
            assert status is not None
            ok = bool(self._veto(self._environ, status, self.headers))
        self.decision = ok
        return ok

    def flush(self) -> None:
        """Commit (or not), then let the held status through to the server."""
        if self.decide():
            commit_units(self._units, where=self._where)
        self.send()

    def send(self) -> None:
        if self.sent or self.status is None:
            return
        self.sent = True
        if self.exc_info is not None:
            self._write = self._start_response(self.status, self.headers, self.exc_info)
        else:
            self._write = self._start_response(self.status, self.headers)


def status_code(status: str) -> int:
    try:
        return int(status[:3])
    except ValueError:
        return 500
