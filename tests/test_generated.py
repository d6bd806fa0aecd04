"""The generated proxy members (``tools/generate_proxy.py``).

There is a module per SQLAlchemy line, and the installed SQLAlchemy's is the one in use.
It is fresh, forwards exactly what SQLAlchemy's own proxy forwards, with its signatures,
and passes on exactly the arguments that SQLAlchemy's proxy passes on. The session's
other public members are an ``AttributeError`` that reads no slot and makes no session.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import inspect
import pathlib
import pydoc
import re
import subprocess
import sys
import types
import typing as t

import pytest

pytest.importorskip(
    "sqlalchemy", reason="the generated members follow SQLAlchemy, which is not installed"
)
import sqlalchemy
import sqlalchemy.ext.asyncio.scoping
import sqlalchemy.orm.scoping
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
)

from scoped_session import _async_session_api, _session_api
from scoped_session._arguments import NotForwarded

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_generator() -> types.ModuleType:
    # tools/ is not a package: load the script from its path.
    path = ROOT / "tools" / "generate_proxy.py"
    spec = importlib.util.spec_from_file_location("_generate_proxy", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks its module up there
    spec.loader.exec_module(module)
    return module


generator = _load_generator()
INSTALLED = sqlalchemy.__version__
LINE = generator.line_of(INSTALLED)


class Case(t.NamedTuple):
    """One session kind: our proxy class in use and what it follows."""

    kind: str
    path: pathlib.Path
    proxy: type[t.Any]
    session: type[t.Any]
    sqlalchemy_proxy: type[t.Any]
    #: the module of SQLAlchemy's proxy, whose class-level members call its session class
    sqlalchemy_module: types.ModuleType


CASES = {
    "sync": Case(
        "sync",
        ROOT / generator.KINDS["sync"].target(LINE),
        _session_api.SessionProxy,
        Session,
        scoped_session,
        sqlalchemy.orm.scoping,
    ),
    "async": Case(
        "async",
        ROOT / generator.KINDS["async"].target(LINE),
        _async_session_api.AsyncSessionProxy,
        AsyncSession,
        async_scoped_session,
        sqlalchemy.ext.asyncio.scoping,
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def _recorded(case: Case) -> str:
    version = generator.recorded_version(case.path.read_text(encoding="utf-8"))
    assert version, f"{case.path.name} names no SQLAlchemy release in its docstring"
    return str(version)


def _older_than_recorded(case: Case) -> bool:
    """Whether the module was generated from a newer release of the installed line."""
    return bool(generator.release(_recorded(case)) > generator.release(INSTALLED))


def sqlalchemy_proxied(case: Case) -> set[str]:
    """What SQLAlchemy's own proxy forwards: the members between its proxy markers.

    Read from its source independently of the generator (which parses it with ast).
    """
    source = inspect.getsource(case.sqlalchemy_proxy)
    name = case.sqlalchemy_proxy.__name__
    block = re.search(
        rf"# START PROXY METHODS {name}\n(.*)# END PROXY METHODS {name}\n", source, re.DOTALL
    )
    assert block, f"no proxy markers in {name}"
    return set(re.findall(r"^    (?:async )?def (\w+)\(", block.group(1), re.MULTILINE))


def forwarded(cls: type[t.Any]) -> dict[str, object]:
    """A class's own members: its methods, classmethods and properties."""
    member_types = (types.FunctionType, classmethod, property)
    return {name: value for name, value in vars(cls).items() if isinstance(value, member_types)}


def names_of(cls: type[t.Any], *member_types: type[object]) -> list[str]:
    return sorted(name for name, value in forwarded(cls).items() if isinstance(value, member_types))


def unforwarded(case: Case) -> set[str]:
    """The session's public members that SQLAlchemy's proxy does not have: its class's,
    those an instance sets, and those its class only annotates."""
    names = set(dir(case.session)) | set(vars(case.session()))
    for cls in case.session.__mro__:
        names.update(inspect.get_annotations(cls))
    proxy = set(dir(case.sqlalchemy_proxy))
    return {name for name in names if not name.startswith("_") and name not in proxy}


# --------------------------------------------------------------------------- the line


@pytest.mark.parametrize(
    ("version", "line"),
    [
        ("2.0.22", "20"),
        ("2.0.59", "20"),
        ("1.4.54", "20"),
        ("2.1.0b1", "21"),
        ("2.1.9", "21"),
        ("2.2.0", "21"),
        ("3.0", "21"),
        ("", "21"),
        ("unknown", "21"),
        (None, "21"),
    ],
)
def test_the_line_for_a_version(version: str | None, line: str) -> None:
    """2.0 (and older) gets the 2.0 members; 2.1, anything newer or unknown, and no
    SQLAlchemy at all the newest."""
    assert _session_api.line_for(version) == line


def test_the_installed_line_is_used(case: Case) -> None:
    assert _session_api.LINE == LINE
    assert _session_api.installed_sqlalchemy() == INSTALLED
    assert case.proxy.__module__ == f"scoped_session.{case.path.stem}"


def test_the_version_is_the_installed_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from the metadata beside the package that would be imported, else through
    importlib.metadata; once SQLAlchemy is imported, its own ``__version__``."""
    expected = importlib.metadata.version("sqlalchemy")
    monkeypatch.setattr(sqlalchemy, "__version__", "2.0.0")
    assert _session_api.installed_sqlalchemy() == "2.0.0"
    monkeypatch.delitem(sys.modules, "sqlalchemy")
    assert _session_api.installed_sqlalchemy() == expected
    monkeypatch.setattr(_session_api, "_DIST_INFO", re.compile("(?!)"))  # matches nothing
    assert _session_api.installed_sqlalchemy() == expected
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # as if not installed
    assert _session_api.installed_sqlalchemy() is None


def test_the_version_is_read_without_importing_sqlalchemy() -> None:
    script = (
        "import sys\n"
        "import scoped_session, scoped_session.asyncio\n"
        "from scoped_session import _session_api, _async_session_api\n"
        "assert 'sqlalchemy' not in sys.modules, 'SQLAlchemy was imported'\n"
        "print(_session_api.installed_sqlalchemy(), _session_api.LINE)\n"
        "print(_session_api.SessionProxy.__module__)\n"
        "print(_async_session_api.AsyncSessionProxy.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        importlib.metadata.version("sqlalchemy"),
        LINE,
        f"scoped_session._session_api_{LINE}",
        f"scoped_session._async_session_api_{LINE}",
    ]


def test_without_sqlalchemy_the_newest_line_is_used() -> None:
    script = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None  # as if not installed: any import of it fails\n"
        "from scoped_session import ScopedSession, _session_api\n"
        "class Fake:\n"
        "    def close(self): pass\n"
        "Session = ScopedSession(Fake)\n"
        "Session.close()\n"
        "print(_session_api.installed_sqlalchemy(), _session_api.SessionProxy.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "scoped_session._session_api_21"]


# --------------------------------------------------------------------------- fresh


def test_fresh(case: Case) -> None:
    if _older_than_recorded(case):
        pytest.skip(
            f"{case.path.name} was generated from SQLAlchemy {_recorded(case)}; the installed "
            f"{INSTALLED} is an older release of its line, so it is not regenerated from it"
        )
    expected = generator.generate(case.kind)
    checked_in = case.path.read_text(encoding="utf-8")
    if checked_in != expected:
        diff = "".join(
            difflib.unified_diff(
                checked_in.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                f"{case.path.name} (checked in)",
                f"{case.path.name} (generated from SQLAlchemy {INSTALLED})",
            )
        )
        pytest.fail(
            f"{case.path.name} is stale; run 'python tools/generate_proxy.py'.\n{diff}",
            pytrace=False,
        )


def test_check_option_reports_a_stale_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--check`` exits 1 with a diff when a module differs, and writes nothing."""
    if any(_older_than_recorded(case) for case in CASES.values()):
        pytest.skip(f"the modules were generated from a newer release than {INSTALLED}")
    original = generator.generate
    monkeypatch.setattr(generator, "generate", lambda kind: original(kind) + "# drift\n")
    before = CASES["sync"].path.read_bytes()
    assert generator.main(["--check"]) == 1
    assert "+# drift" in capsys.readouterr().out
    assert CASES["sync"].path.read_bytes() == before
    monkeypatch.setattr(generator, "generate", original)
    assert generator.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


def test_an_older_release_keeps_a_newer_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run with an older release of the line, the script neither rewrites nor checks
    a module generated from a newer one."""
    newest = max((_recorded(case) for case in CASES.values()), key=generator.release)
    older = ".".join(str(part) for part in generator.release(newest)[:2]) + ".0"
    if generator.release(older) == generator.release(newest):
        pytest.skip(f"the modules were generated from {newest}, the first of its line")
    monkeypatch.setattr(generator, "installed_version", lambda: older)
    monkeypatch.setattr(generator, "generate", lambda kind: pytest.fail("generated"))
    before = {case.path: case.path.read_bytes() for case in CASES.values()}
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    assert "kept" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in before} == before


# --------------------------------------------------------------------------- faithful


def test_names_are_those_sqlalchemy_proxies(case: Case) -> None:
    expected = sqlalchemy_proxied(case)
    assert expected  # the markers were found and held names
    assert set(forwarded(case.proxy)) == expected


def test_member_kinds_match_sqlalchemys_proxy(case: Case) -> None:
    for name in sqlalchemy_proxied(case):
        theirs = inspect.getattr_static(case.sqlalchemy_proxy, name)
        ours = inspect.getattr_static(case.proxy, name)
        assert type(ours) is type(theirs), name
        if isinstance(theirs, property):
            assert isinstance(ours, property)
            assert (ours.fset is None) == (theirs.fset is None), name
            assert ours.fdel is theirs.fdel is None, name


#: What differs within a line, by member: annotations only (2.0.22 annotates
#: bulk_insert_mappings' mapper as Mapper[Any], 2.0.59 as _EntityBindKey[Any]).
ANNOTATED_DIFFERENTLY = {"bulk_insert_mappings", "bulk_update_mappings"}


def _without_annotations(signature: inspect.Signature) -> inspect.Signature:
    return signature.replace(
        parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )


def test_signatures_are_sqlalchemys(case: Case) -> None:
    """``inspect.signature`` shows SQLAlchemy's proxy's signature, on the class and on
    an instance: the same on the release the module was generated from; on an older
    one of its line, the same parameters and defaults, and but for a few members the
    same annotations."""
    functions = names_of(case.proxy, types.FunctionType, classmethod)
    assert functions
    pairs = [(case.proxy, case.sqlalchemy_proxy), (PROBES[case.kind](None), _theirs(case, None))]
    differ = set()
    for name in functions:
        for ours_object, theirs_object in pairs:
            ours = inspect.signature(getattr(ours_object, name))
            theirs = inspect.signature(getattr(theirs_object, name))
            if ours != theirs:
                differ.add(name)
                assert _without_annotations(ours) == _without_annotations(theirs), name
    if _older_than_recorded(case):
        assert differ <= ANNOTATED_DIFFERENTLY
    else:
        assert not differ


def test_properties_are_annotated_as_sqlalchemys(case: Case) -> None:
    if _older_than_recorded(case):
        pytest.skip(f"SQLAlchemy {INSTALLED} annotates some properties as Any")
    for name in names_of(case.proxy, property):
        ours = inspect.getattr_static(case.proxy, name)
        theirs = inspect.getattr_static(case.sqlalchemy_proxy, name)
        for ours_f, theirs_f in ((ours.fget, theirs.fget), (ours.fset, theirs.fset)):
            if theirs_f is not None:
                assert inspect.signature(ours_f) == inspect.signature(theirs_f), name


def test_help_shows_sqlalchemys_signatures(case: Case) -> None:
    text = pydoc.plain(pydoc.render_doc(case.proxy))
    # Python 3.13 wraps a long signature over lines: join them first.
    flat = re.sub(r"(?<=[(,])\n \|\s+", " ", text)
    assert re.search(r"^ \|  execute\( ?self, statement: '", flat, re.MULTILINE)
    for name in forwarded(case.proxy):
        assert inspect.getdoc(getattr(case.proxy, name)), name


def test_runs_without_sqlalchemy(case: Case) -> None:
    """The module imports nothing of SQLAlchemy."""
    script = (
        "import inspect, runpy, sys\n"
        "sys.modules['sqlalchemy'] = None  # any import of it fails\n"
        f"namespace = runpy.run_path({str(case.path)!r})\n"
        f"proxy = namespace[{case.proxy.__name__!r}]\n"
        "print(inspect.signature(proxy.execute))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("(self, statement: 'Executable'")


# --------------------------------------------------------------------------- forwarding


class Done:
    """What a recorded call returns: awaitable, to itself, for SQLAlchemy's async proxy."""

    def __await__(self) -> t.Generator[t.Any, None, Done]:
        return self
        yield  # a generator that returns at once


class Recorder:
    """A fake session: records each call it gets and returns a fresh :class:`Done`."""

    _is_asyncio = False  # read by SQLAlchemy's scoped_session.__call__ only

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[t.Any, ...], dict[str, t.Any]]] = []
        self.returned: list[Done] = []

    def __getattr__(self, name: str) -> t.Callable[..., Done]:
        def method(*args: t.Any, **kwargs: t.Any) -> Done:
            self.calls.append((name, args, kwargs))
            self.returned.append(Done())
            return self.returned[-1]

        return method


class _ProbeSlot:
    """A slot whose cell holds the probe's session; counts the reads."""

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    @property
    def cell(self) -> _ProbeSlot:
        self.probe.current_calls += 1
        return self

    @property
    def session(self) -> object:
        return self.probe.session


class _Probe:
    """The registry's side of the contract: ``_slot``, ``_create()`` and
    ``_session_class()``."""

    session_class: t.ClassVar[object] = None

    def __init__(self, session: object) -> None:
        self.session = session
        self.current_calls = 0
        self._slot = _ProbeSlot(self)

    def _create(self, kw: dict[str, object], shown: object) -> object:
        raise AssertionError("the probe's session is always there")

    @classmethod
    def _session_class(cls) -> object:
        return cls.session_class


#: A probe class per kind, on the proxy class in use (typed Any: the proxy's members
#: are typed for SQLAlchemy's sessions, and these calls pass markers).
PROBES: dict[str, t.Any] = {
    kind: type(f"{kind.title()}Probe", (_Probe, case.proxy), {}) for kind, case in CASES.items()
}


def calls_for(signature: inspect.Signature) -> list[tuple[tuple[object, ...], dict[str, object]]]:
    """Argument lists for a member: only what it requires; everything, by keyword
    where it can be; everything positionally where it can be, plus extra ``*args``
    and ``**kw`` where it takes them. Each value names its parameter."""
    P = inspect.Parameter
    parameters = list(signature.parameters.values())
    required: tuple[list[object], dict[str, object]] = ([], {})
    by_keyword: tuple[list[object], dict[str, object]] = ([], {})
    positional: tuple[list[object], dict[str, object]] = ([], {})
    has_star = any(p.kind is P.VAR_POSITIONAL for p in parameters)
    for p in parameters:
        marker = f"<{p.name}>"
        if p.kind is P.VAR_POSITIONAL:
            by_keyword[0].extend(["<more>", "<most>"])
            positional[0].extend(["<more>", "<most>"])
        elif p.kind is P.VAR_KEYWORD:
            by_keyword[1]["extra"] = "<extra>"
            positional[1]["extra"] = "<extra>"
        elif p.kind is P.KEYWORD_ONLY:
            for call in (by_keyword, positional):
                call[1][p.name] = marker
            if p.default is p.empty:
                required[1][p.name] = marker
        else:
            if p.default is p.empty:
                required[0].append(marker)
            if p.kind is P.POSITIONAL_ONLY or has_star:
                by_keyword[0].append(marker)
            else:
                by_keyword[1][p.name] = marker
            positional[0].append(marker)
    return [(tuple(args), kwargs) for args, kwargs in (required, by_keyword, positional)]


def _result(value: object) -> object:
    """A call's value: a coroutine (SQLAlchemy's async proxy) run to its end."""
    if inspect.iscoroutine(value):
        try:
            value.send(None)
        except StopIteration as stop:
            return stop.value
        raise AssertionError("the coroutine waited")
    return value


def _theirs(case: Case, session: Recorder | None) -> t.Any:
    """SQLAlchemy's proxy, on ``session``."""
    factory = t.cast("t.Any", lambda: session)
    if case.kind == "async":
        return async_scoped_session(factory, scopefunc=lambda: 1)
    return scoped_session(factory)


def test_methods_pass_on_what_sqlalchemys_proxy_passes_on(case: Case) -> None:
    """Each method calls the caller's session once, with exactly the arguments that
    SQLAlchemy's proxy passes on (every parameter explicitly, defaults too), and
    returns what the session returned."""
    for name in names_of(case.proxy, types.FunctionType):
        signature = inspect.signature(getattr(case.sqlalchemy_proxy, name))
        unbound = signature.replace(parameters=list(signature.parameters.values())[1:])
        for args, kwargs in calls_for(unbound):
            ours_session, theirs_session = Recorder(), Recorder()
            probe = PROBES[case.kind](ours_session)
            result = getattr(probe, name)(*args, **kwargs)
            _result(getattr(_theirs(case, theirs_session), name)(*args, **kwargs))
            assert ours_session.calls == theirs_session.calls, (name, args, kwargs)
            assert len(ours_session.calls) == 1
            assert result is ours_session.returned[0]
            assert probe.current_calls == 1


def test_classmethods_pass_on_what_sqlalchemys_proxy_passes_on(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each classmethod calls the session class, as SQLAlchemy's proxy does, and
    makes no session, through the class and through an instance."""
    names = names_of(case.proxy, classmethod)
    assert names
    for name in names:
        signature = inspect.signature(getattr(case.sqlalchemy_proxy, name))
        for args, kwargs in calls_for(signature):
            ours_class, theirs_class = Recorder(), Recorder()
            probe_class = PROBES[case.kind]
            monkeypatch.setattr(probe_class, "session_class", ours_class)
            monkeypatch.setattr(case.sqlalchemy_module, case.session.__name__, theirs_class)
            probe = probe_class(Recorder())
            assert getattr(probe_class, name)(*args, **kwargs) is ours_class.returned[0]
            assert getattr(probe, name)(*args, **kwargs) is ours_class.returned[1]
            _result(getattr(case.sqlalchemy_proxy, name)(*args, **kwargs))
            assert ours_class.calls == theirs_class.calls * 2, (name, args, kwargs)
            assert probe.current_calls == 0
            assert probe.session.calls == []


def test_properties_read_and_set_the_sessions(case: Case) -> None:
    """Reading reads the session's attribute; assigning sets it where SQLAlchemy's
    proxy does; deleting is refused."""
    names = names_of(case.proxy, property)
    assert names
    for name in names:
        session = Recorder()
        probe = PROBES[case.kind](session)
        value = object()
        vars(session)[name] = value
        assert getattr(probe, name) is value
        settable = inspect.getattr_static(case.sqlalchemy_proxy, name).fset is not None
        other = object()
        if settable:
            setattr(probe, name, other)
            assert vars(session)[name] is other
        else:
            with pytest.raises(AttributeError):
                setattr(probe, name, other)
            assert vars(session)[name] is value
        with pytest.raises(AttributeError):
            delattr(probe, name)
        assert session.calls == []
        assert probe.current_calls == (2 if settable else 1)


# --------------------------------------------------------------------------- not forwarded


def test_the_sessions_other_members_are_not_forwarded(case: Case) -> None:
    """A public member of the session that SQLAlchemy's proxy lacks (``in_transaction``,
    ``sync_session`` ...) is an AttributeError that says to use the session; it reads
    no slot, so it makes no session."""
    names = unforwarded(case)
    assert "in_transaction" in names
    assert "get_transaction" in names
    assert ("sync_session" in names) == (case.kind == "async")
    probe = PROBES[case.kind](Recorder())
    for name in sorted(names):
        assert not hasattr(probe, name), name
        assert not hasattr(type(probe), name), name
        with pytest.raises(AttributeError) as caught:
            getattr(probe, name)
        message = str(caught.value)
        assert message.startswith(f"'{type(probe).__name__}' object has no attribute '{name}': ")
        awaited = "await " if name == "run_sync" else ""
        assert f". Use it on the session: {awaited}Session().{name}" in message
        assert f"SQLAlchemy's {case.sqlalchemy_proxy.__name__}" in message
        assert caught.value.name == name
        assert caught.value.obj is probe
    assert probe.current_calls == 0
    assert probe.session.calls == []
    hint = "Session().in_transaction()"
    with pytest.raises(AttributeError, match=re.escape(hint)):
        probe.in_transaction()
    descriptors = {
        name for name, value in vars(case.proxy).items() if isinstance(value, NotForwarded)
    }
    assert descriptors == names


# --------------------------------------------------------------------------- real sessions


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)


def test_a_session_subclass_gets_what_sqlalchemys_proxy_passes() -> None:
    """A subclass's override receives every parameter, defaults included, as
    SQLAlchemy's proxy passes them."""
    received: list[tuple[tuple[t.Any, ...], dict[str, t.Any]]] = []
    marker = object()

    class MySession(Session):
        def get_bind(self, *args: t.Any, **kw: t.Any) -> t.Any:
            received.append((args, kw))
            return marker

    session = MySession()
    theirs = scoped_session(t.cast("t.Any", lambda: session))
    try:
        assert PROBES["sync"](session).get_bind(Note) is marker
        assert theirs.get_bind(Note) is marker
        assert PROBES["sync"](session).get_bind() is marker
        assert theirs.get_bind() is marker
    finally:
        session.close()
    assert received[0] == received[1]
    assert received[2] == received[3]
    assert received[0][1]["mapper"] is Note
    assert "clause" in received[2][1]


def test_real_session_members() -> None:
    """On a real session and database, with the defaults the forwarders pass on."""
    engine = sqlalchemy.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    session = Session(engine)
    try:
        probe = PROBES["sync"](session)
        note = Note(id=1)
        probe.add(note)
        assert note in probe
        assert list(probe) == [note]
        assert probe.new == session.new
        assert probe.autoflush is session.autoflush
        probe.autoflush = False
        assert session.autoflush is False
        with pytest.raises(AttributeError, match=re.escape("Session().in_transaction()")):
            probe.in_transaction()
        assert session.in_transaction()  # autobegun by add()
        probe.flush()
        assert probe.get(Note, 1) is note
        assert probe.get_one(Note, 1, populate_existing=True) is note
        assert probe.scalars(sqlalchemy.select(Note)).all() == [note]
        assert probe.scalar(sqlalchemy.select(Note.id)) == 1
        assert probe.execute(sqlalchemy.select(Note.id)).all() == [(1,)]
        assert probe.merge(Note(id=1)) is note
        probe.commit()
        assert probe.query(Note).one() is note
    finally:
        session.close()
        engine.dispose()


@pytest.mark.parametrize(("kind", "session_class"), [("sync", Session), ("async", AsyncSession)])
def test_real_classmethods(
    kind: str, session_class: type[t.Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    probe_class = PROBES[kind]
    monkeypatch.setattr(probe_class, "session_class", session_class)
    key = session_class.identity_key(Note, 1)
    assert probe_class.identity_key(Note, 1) == key
    assert probe_class.identity_key(Note, ident=1) == key
    session = Session()
    try:
        note = Note(id=2)
        session.add(note)
        found = probe_class.object_session(note)
        assert found is session_class.object_session(note)
    finally:
        session.close()
