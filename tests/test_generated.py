"""The generated proxy members (``tools/generate_proxy.py``).

They are fresh for the installed SQLAlchemy, show SQLAlchemy's signatures, cover exactly
what SQLAlchemy's own proxies cover, and forward every call exactly as given.
"""

from __future__ import annotations

import difflib
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
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
)

from scoped_session._async_session_api import (
    AsyncSessionProxy,
    AsyncSessionSignatures,
)
from scoped_session._session_api import SessionProxy, SessionSignatures

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


class Case(t.NamedTuple):
    """One generated module and what it follows."""

    kind: str
    path: pathlib.Path
    proxy: type[t.Any]
    signatures: type[t.Any]
    session: type[t.Any]
    sqlalchemy_proxy: type[t.Any]


CASES = {
    "sync": Case(
        "sync",
        ROOT / "scoped_session" / "_session_api.py",
        SessionProxy,
        SessionSignatures,
        Session,
        scoped_session,
    ),
    "async": Case(
        "async",
        ROOT / "scoped_session" / "_async_session_api.py",
        AsyncSessionProxy,
        AsyncSessionSignatures,
        AsyncSession,
        async_scoped_session,
    ),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


INSTALLED = _major_minor(sqlalchemy.__version__)


def _recorded(case: Case) -> tuple[int, int]:
    found = re.search(r"from SQLAlchemy (\d+\.\d+)", case.path.read_text(encoding="utf-8"))
    assert found, f"{case.path.name} names no SQLAlchemy version in its header"
    return _major_minor(found.group(1))


def _show(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


def _require_recorded_version(case: Case) -> None:
    """Skip unless the installed SQLAlchemy is the one the module was generated from."""
    recorded = _recorded(case)
    if recorded != INSTALLED:
        pytest.skip(
            f"{case.path.name} was generated from SQLAlchemy {_show(recorded)}; "
            f"SQLAlchemy {_show(INSTALLED)} is installed"
        )


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


# --------------------------------------------------------------------------- fresh


def test_fresh(case: Case) -> None:
    recorded = _recorded(case)
    if recorded > INSTALLED:
        pytest.skip(
            f"{case.path.name} was generated from SQLAlchemy {_show(recorded)}; the installed "
            f"SQLAlchemy {_show(INSTALLED)} is older, so it is not regenerated from it"
        )
    expected = generator.generate(case.kind)
    checked_in = case.path.read_text(encoding="utf-8")
    if checked_in != expected:
        diff = "".join(
            difflib.unified_diff(
                checked_in.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                f"{case.path.name} (checked in)",
                f"{case.path.name} (generated from SQLAlchemy {sqlalchemy.__version__})",
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
    _require_recorded_version(CASES["sync"])
    _require_recorded_version(CASES["async"])
    original = generator.generate
    monkeypatch.setattr(generator, "generate", lambda kind: original(kind) + "# drift\n")
    before = CASES["sync"].path.read_bytes()
    assert generator.main(["--check"]) == 1
    assert "+# drift" in capsys.readouterr().out
    assert CASES["sync"].path.read_bytes() == before
    monkeypatch.setattr(generator, "generate", original)
    assert generator.main(["--check"]) == 0
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- faithful


def test_names_are_those_sqlalchemy_proxies(case: Case) -> None:
    _require_recorded_version(case)
    expected = sqlalchemy_proxied(case)
    assert expected  # the markers were found and held names
    assert set(forwarded(case.proxy)) == expected
    assert set(forwarded(case.signatures)) == expected


def test_signatures_are_the_sessions(case: Case) -> None:
    _require_recorded_version(case)
    functions = names_of(case.proxy, types.FunctionType, classmethod)
    assert functions
    for name in functions:
        ours = inspect.signature(getattr(case.proxy, name))
        theirs = inspect.signature(getattr(case.session, name))
        twin = inspect.signature(getattr(case.signatures, name))
        assert ours == theirs, name
        assert twin == theirs, name


def test_overloads_are_the_sessions(case: Case) -> None:
    _require_recorded_version(case)
    overloaded = 0
    for name in names_of(case.signatures, types.FunctionType, classmethod):
        ours = t.get_overloads(getattr(case.signatures, name))
        theirs = t.get_overloads(getattr(case.session, name))
        assert [inspect.signature(o) for o in ours] == [inspect.signature(o) for o in theirs]
        overloaded += bool(theirs)
    assert overloaded  # execute, scalar, scalars ... have overloads


def test_member_kinds_match_sqlalchemys_proxy(case: Case) -> None:
    _require_recorded_version(case)
    for name in sqlalchemy_proxied(case):
        theirs = inspect.getattr_static(case.sqlalchemy_proxy, name)
        ours = inspect.getattr_static(case.proxy, name)
        twin = inspect.getattr_static(case.signatures, name)
        assert type(ours) is type(theirs) is type(twin), name
        if isinstance(theirs, property):
            assert isinstance(ours, property)
            assert isinstance(twin, property)
            assert (ours.fset is None) == (theirs.fset is None), name
            assert (twin.fset is None) == (theirs.fset is None), name
            assert twin.fget is not None
            assert theirs.fget is not None
            returns = inspect.signature(theirs.fget).return_annotation
            assert inspect.signature(twin.fget).return_annotation == returns, name


def test_async_members_are_coroutines_where_the_sessions_are() -> None:
    case = CASES["async"]
    _require_recorded_version(case)
    for name in names_of(case.signatures, types.FunctionType, classmethod):
        twin = getattr(case.signatures, name)
        session_member = getattr(case.session, name)
        assert inspect.iscoroutinefunction(twin) == inspect.iscoroutinefunction(session_member)


def test_help_shows_the_twins(case: Case) -> None:
    for name, forwarder in forwarded(case.proxy).items():
        assert inspect.getdoc(getattr(case.proxy, name)) == inspect.getdoc(
            getattr(case.signatures, name)
        )
        assert getattr(case.proxy, name).__doc__, name
        if not isinstance(forwarder, property):
            twin = inspect.signature(getattr(case.signatures, name))
            assert inspect.signature(getattr(case.proxy, name)) == twin
    text = pydoc.plain(pydoc.render_doc(case.proxy))
    # pydoc lists properties after the methods: settable ones as data descriptors,
    # the others (since Python 3.11) as read-only properties.
    methods, _, descriptors = text.partition("Data descriptors defined here:")
    _, _, read_only = methods.partition("Readonly properties defined here:")
    for name, forwarder in forwarded(case.proxy).items():
        if isinstance(forwarder, property):
            section = read_only if forwarder.fset is None else descriptors
            assert re.search(rf"^ \|  {name}\n", section, re.MULTILINE), name
    # Python 3.13 wraps a long signature over lines: join them first.
    flat = re.sub(r"(?<=[(,])\n \|\s+", " ", text)
    assert re.search(r"^ \|  execute\( ?self, statement: '", flat, re.MULTILINE)


def test_runs_without_sqlalchemy(case: Case) -> None:
    """The module imports nothing of SQLAlchemy at runtime, and still sets up its twins."""
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


class Recorder:
    """A fake session: records each call it gets and returns a marker of its own."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[t.Any, ...], dict[str, t.Any]]] = []
        self.returned: list[object] = []

    def __getattr__(self, name: str) -> t.Callable[..., object]:
        def method(*args: t.Any, **kwargs: t.Any) -> object:
            self.calls.append((name, args, kwargs))
            self.returned.append(object())
            return self.returned[-1]

        return method

    def __contains__(self, instance: object) -> bool:
        self.calls.append(("__contains__", (instance,), {}))
        return instance == "inside"

    def __iter__(self) -> t.Iterator[object]:
        self.calls.append(("__iter__", (), {}))
        return iter(["first", "second"])


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

    def _create(self, kw: dict[str, object]) -> object:
        raise AssertionError("the probe's session is always there")

    @classmethod
    def _session_class(cls) -> object:
        return cls.session_class


class SyncProbe(_Probe, SessionProxy):
    pass


class AsyncProbe(_Probe, AsyncSessionProxy):
    pass


PROBES: dict[str, type[SyncProbe] | type[AsyncProbe]] = {"sync": SyncProbe, "async": AsyncProbe}

METHODS = [
    (kind, name)
    for kind, case in CASES.items()
    for name in names_of(case.proxy, types.FunctionType)
    if not name.startswith("__")
]
PROPERTIES = [
    (kind, name) for kind, case in CASES.items() for name in names_of(case.proxy, property)
]
CLASSMETHODS = [
    (kind, name) for kind, case in CASES.items() for name in names_of(case.proxy, classmethod)
]

MARKER = object()
CALLS: list[tuple[tuple[t.Any, ...], dict[str, t.Any]]] = [
    ((), {}),
    ((MARKER,), {}),
    ((), {"execution_options": MARKER}),
    ((1, MARKER), {"x": 3, "_warn": False}),
    (tuple(range(40)), {f"k{i}": i for i in range(40)}),
    # Names the forwarder itself uses reach the session as keywords.
    ((), {"self": 1, "cls": 2, "args": 3, "kwargs": 4, "instance": 5}),
]


@pytest.mark.parametrize(("kind", "name"), METHODS)
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_methods_forward_exactly_as_given(
    kind: str, name: str, args: tuple[t.Any, ...], kwargs: dict[str, t.Any]
) -> None:
    session = Recorder()
    probe = PROBES[kind](session)
    twin = inspect.getattr_static(CASES[kind].signatures, name)
    if len(inspect.signature(twin).parameters) == 1 and (args or kwargs):
        # The session's method takes nothing: so does its forwarder, which
        # refuses arguments as the session would, before reaching it.
        with pytest.raises(TypeError):
            getattr(probe, name)(*args, **kwargs)
        assert session.calls == []
        return
    result = getattr(probe, name)(*args, **kwargs)
    assert session.calls == [(name, args, kwargs)]
    assert result is session.returned[0]
    assert probe.current_calls == 1


@pytest.mark.parametrize(("kind", "name"), PROPERTIES)
def test_properties_forward(kind: str, name: str) -> None:
    """Reading reads the session's attribute; assigning sets it where the typed twin says so."""
    session = Recorder()
    probe = PROBES[kind](session)
    value = object()
    vars(session)[name] = value
    assert getattr(probe, name) is value
    twin = inspect.getattr_static(CASES[kind].signatures, name)
    assert isinstance(twin, property)
    other = object()
    if twin.fset is None:
        with pytest.raises(AttributeError):
            setattr(probe, name, other)
        assert vars(session)[name] is value
    else:
        setattr(probe, name, other)
        assert vars(session)[name] is other
        assert name not in vars(probe)
    assert session.calls == []
    assert probe.current_calls == (1 if twin.fset is None else 2)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_contains_and_iteration_forward(kind: str) -> None:
    session = Recorder()
    probe = PROBES[kind](session)
    marker = object()
    assert "inside" in probe
    assert marker not in probe
    assert list(probe) == ["first", "second"]
    assert session.calls[0] == ("__contains__", ("inside",), {})
    assert session.calls[1][1][0] is marker
    assert session.calls[2] == ("__iter__", (), {})
    assert probe.current_calls == 3


@pytest.mark.parametrize(("kind", "name"), CLASSMETHODS)
@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_classmethods_use_the_session_class_and_make_no_session(
    kind: str,
    name: str,
    args: tuple[t.Any, ...],
    kwargs: dict[str, t.Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe_class = PROBES[kind]
    session_class = Recorder()
    monkeypatch.setattr(probe_class, "session_class", session_class)
    probe = probe_class(Recorder())
    assert getattr(probe_class, name)(*args, **kwargs) is session_class.returned[0]
    assert getattr(probe, name)(*args, **kwargs) is session_class.returned[1]
    assert session_class.calls == [(name, args, kwargs)] * 2
    assert probe.current_calls == 0


# --------------------------------------------------------------------------- real sessions


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"

    id: Mapped[int] = mapped_column(primary_key=True)


def test_a_subclass_override_gets_the_arguments_as_given() -> None:
    """SQLAlchemy's proxy would pass every default of ``get_bind`` by keyword."""
    received: list[tuple[tuple[t.Any, ...], dict[str, t.Any]]] = []

    class MySession(Session):
        def get_bind(self, *args: t.Any, **kw: t.Any) -> t.Any:
            received.append((args, kw))
            return MARKER

    session = MySession()
    try:
        assert SyncProbe(session).get_bind(Note) is MARKER
        assert SyncProbe(session).get_bind() is MARKER
    finally:
        session.close()
    assert received == [((Note,), {}), ((), {})]


def test_real_session_members() -> None:
    session = Session()
    try:
        probe = SyncProbe(session)
        note = Note(id=1)
        probe.add(note)
        assert note in probe
        assert list(probe) == [note]
        assert probe.new == session.new
        assert probe.autoflush is session.autoflush
        probe.autoflush = False
        assert session.autoflush is False
    finally:
        session.close()


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
