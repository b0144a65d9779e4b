"""Fuzzing what gecko_actors reads from outside (issue 11): checkpoint records read back from a
store, store and checkpoint URLs, ``Next`` targets, and ``--input @file`` JSON.

Each property is the same: bad input gets a typed error naming the bad part (never another
exception type), a password in a URL never reaches the error, nothing stored is lost or
executed. Hypothesis runs derandomized (the same examples every time) and Ray-free.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import pickle
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from gecko_actors.checkpoint import (
    CheckpointStore,
    Manifest,
    StateWrite,
    StepRecord,
    encode_value,
)
from gecko_actors.checkpoint.location import Location, parse_uri
from gecko_actors.checkpoint.records import STATUSES, unpack
from gecko_actors.cli import main
from gecko_actors.core.messages import Usage
from gecko_actors.exceptions import (
    CheckpointError,
    ConfigurationError,
    UserError,
    WorkflowError,
)
from gecko_actors.stores.registry import session_store_from_url, vector_store_from_url
from gecko_actors.workflow import Next, WorkflowGraph
from gecko_actors.workflow.engine import RunEngine
from gecko_actors.workflow.execution import LocalExecutor
from gecko_actors.workflow.status import status_from_checkpoint

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CANARY = "CanaryPw-7f3a9e"  # a password: never in an error's text

# Plain msgpack data, with the keys and tags that records and tagged values use, so that
# mutations reach past the first checks.
_KEYS = st.one_of(
    st.sampled_from(["__gecko__", "data", "type", "node", "input", "key", "value", "deleted"]),
    st.text(max_size=4),
    st.binary(max_size=2),
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["AgentOutput", "Message", "ToolCall", "Usage", "json", "dict", "running"]),
)
PLAIN = st.recursive(
    _LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8,
)


# --- checkpoint records read back from a store -----------------------------------------------


class _Exploit:
    """Unpickling this creates a file: the proof that nothing from a checkpoint executes."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (open, (str(self.flag), "w"))


class Seeded:
    """A ``file://`` store holding two runs, ``other`` and ``victim`` (manifest, status, three
    steps each), what each read of them returns, and ways to damage ``victim``."""

    RUNS = ("other", "victim")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = CheckpointStore(f"file://{root}", inline_limit=0)  # data objects too
        self.flag = root.parent / "pwned"
        for run_id in self.RUNS:
            self.store.create_manifest(
                Manifest(run_id, "wf", "f" * 64, {"topic": run_id}, created_at=1.0)
            )
            self.store.update_status(run_id, "succeeded", result=["done", b"\x00"])
            for seq in range(3):
                self.store.commit_step(run_id, self._step(seq))
        self.data_names = sorted(p.name for p in self.path("steps").glob("*-*.msgpack"))
        self.manifests = {r: self.store.read_manifest(r) for r in self.RUNS}
        self.steps = {r: self.store.load_steps(r) for r in self.RUNS}
        self.statuses = {r: status_from_checkpoint(self.store, r) for r in self.RUNS}
        self.pickles = [pickle.dumps(_Exploit(self.flag), protocol=p) for p in range(6)]

    @staticmethod
    def _step(seq: int) -> StepRecord:
        return StepRecord(
            seq=seq,
            node=f"n{seq}",
            visit=0,
            output={"answer": [seq, "x", 1.5, None, b"raw"]},
            writes=(StateWrite("k", seq), StateWrite("gone", deleted=True)),
            usage=Usage(requests=1, input_tokens=seq),
            next=Next("n0", {"again": True}) if seq == 1 else None,
            routes={"n2": True} if seq == 0 else None,
            finished_at=2.0,
        )

    def path(self, *parts: str) -> Path:
        return self.root.joinpath("victim", *parts)

    def data_path(self, seq: int) -> Path:
        """Step ``seq``'s data object as committed (a forged one sits beside it)."""
        return self.path("steps", self.data_names[seq])

    def files(self) -> dict[str, tuple[int, int, int]]:
        """Every stored object: path -> (inode, size, mtime). Any write (in place, or by a
        rename over it) or deletion changes it; nothing needs to be opened."""
        found = {}
        for folder, _, names in os.walk(self.root):
            for name in names:
                info = os.stat(os.path.join(folder, name))
                found[os.path.join(folder, name)] = (info.st_ino, info.st_size, info.st_mtime_ns)
        return found


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return Seeded(tmp_path_factory.mktemp("fuzz-checkpoint") / "store")


@contextmanager
def planted(seeded: Seeded, target: str, seq: int, payload: bytes) -> Iterator[str]:
    """Put ``payload`` where ``target`` says in run ``victim``, and give the object's path
    relative to the store; everything is put back afterwards.

    ``manifest``, ``status``, ``commit`` (step ``seq``'s marker): the object is replaced.
    ``data``: step ``seq``'s data is replaced, its marker (size, sha256) left as it was.
    ``forged``: a new data object, named by its hash, with a marker that matches it (what a
    writer that got past the hash would leave).
    """
    marker = seeded.path("steps", f"{seq:08d}.commit")
    if target == "forged":
        digest = hashlib.sha256(payload).hexdigest()
        path = seeded.path("steps", f"{seq:08d}-{digest}.msgpack")
        forged = {
            "type": "commit",
            "version": 2,
            "run_id": "victim",
            "seq": seq,
            "object": path.name,
            "size": len(payload),
            "sha256": digest,
            "epoch": 0,
        }
        changed = {marker: msgpack.packb(forged), path: payload}
    else:
        path = {
            "manifest": seeded.path("manifest.msgpack"),
            "status": seeded.path("status.msgpack"),
            "commit": marker,
            "data": seeded.data_path(seq),
        }[target]
        changed = {path: payload}
    originals = {p: p.read_bytes() if p.exists() else None for p in changed}
    for changed_path, raw in changed.items():
        changed_path.write_bytes(raw)
    try:
        yield str(path.relative_to(seeded.root))
    finally:
        for changed_path, raw in originals.items():
            if raw is None:
                changed_path.unlink()
            else:
                changed_path.write_bytes(raw)


def _original(seeded: Seeded, target: str, seq: int) -> bytes:
    if target in ("data", "forged"):
        return seeded.data_path(seq).read_bytes()
    name = {"manifest": "manifest.msgpack", "status": "status.msgpack"}.get(target)
    return seeded.path(name or f"steps/{seq:08d}.commit").read_bytes()


@st.composite
def damage(draw: st.DrawFn, original: bytes, pickles: list[bytes]) -> tuple[str, bytes]:
    """(kind, bytes) made from a stored object's ``original`` bytes. Every kind but
    ``shape`` and ``pickle-as-bytes`` is invalid for sure."""
    record = msgpack.unpackb(original, raw=False)
    kind = draw(
        st.sampled_from(
            ["random", "truncated", "pickle", "extension", "version", "shape", "pickle-as-bytes"]
        )
    )
    if kind == "random":
        return kind, draw(st.binary(max_size=300).filter(lambda b: b != original))
    if kind == "truncated":
        return kind, original[: draw(st.integers(0, len(original) - 1))]
    if kind == "pickle":
        return kind, draw(st.sampled_from(pickles))
    key = draw(st.sampled_from(sorted(record)))
    if kind == "extension":  # a pickle wrapped in a msgpack extension type, anywhere
        ext = msgpack.ExtType(draw(st.integers(0, 127)), draw(st.sampled_from(pickles)))
        return kind, msgpack.packb({**record, key: ext})
    if kind == "version":
        version = draw(PLAIN.filter(lambda v: not (type(v) is int and v == 2)))
        return kind, msgpack.packb({**record, "version": version})
    if kind == "pickle-as-bytes":  # a valid record whose values are pickle bytes: data
        return kind, msgpack.packb(
            {**record, key: draw(st.sampled_from(pickles))}, use_bin_type=True
        )
    mutation = draw(st.sampled_from(["replace", "drop", "add", "whole"]))
    if mutation == "replace":
        record = {**record, key: draw(PLAIN)}
    elif mutation == "drop":
        record = {k: v for k, v in record.items() if k != key}
    elif mutation == "add":
        record = {**record, draw(_KEYS): draw(PLAIN)}
    else:
        record = draw(PLAIN)
    return kind, msgpack.packb(record, use_bin_type=True)


def _check_refusal(err: BaseException, where: set[str]) -> None:
    """A CheckpointError (not a subclass such as OwnershipLost) naming the run, the object
    (one of ``where``) and what is wrong with it."""
    assert type(err) is CheckpointError, repr(err)
    assert err.run_id == "victim"
    assert any(err.uri.endswith(path) for path in where), (err.uri, where)
    assert repr(err.uri) in err.message
    problem = err.message.split(repr(err.uri), 1)[1]
    assert len(problem.strip(" :")) > 10  # what is wrong, after the object's name
    assert "run 'victim'" in err.message


def _check_typed(loaded: Any) -> None:
    """What a damaged-but-loadable record gives back has the documented types."""
    if isinstance(loaded, Manifest):
        assert isinstance(loaded.workflow, str) and isinstance(loaded.fingerprint, str)
        assert loaded.status in STATUSES and type(loaded.created_at) in (int, float)
        assert loaded.error is None or isinstance(loaded.error, str)
        return
    for step in loaded:
        assert isinstance(step, StepRecord)
        assert all(type(getattr(step, f)) is int for f in ("seq", "visit", "attempts", "epoch"))
        assert isinstance(step.node, str) and isinstance(step.writes, tuple)
        assert all(isinstance(w, StateWrite) and isinstance(w.key, str) for w in step.writes)
        assert step.usage is None or isinstance(step.usage, Usage)
        assert step.next is None or (isinstance(step.next, Next) and type(step.next.node) is str)
        assert step.routes is None or all(type(v) is bool for v in step.routes.values())


def _read_victim(seeded: Seeded, target: str) -> Any:
    if target in ("manifest", "status"):
        return seeded.store.read_manifest("victim")
    return seeded.store.load_steps("victim")


TARGETS = [("manifest", 0), ("status", 0)] + [
    (target, seq) for target in ("commit", "data", "forged") for seq in range(3)
]


@settings(FUZZ, max_examples=150)
@given(st.data())
def test_damaged_checkpoint_objects_are_refused_and_nothing_else_is_affected(
    seeded: Seeded, data: st.DataObject
) -> None:
    target, seq = data.draw(st.sampled_from(TARGETS), label="target")
    kind, payload = data.draw(damage(_original(seeded, target, seq), seeded.pickles), "damage")
    assume(payload != _original(seeded, target, seq))
    with planted(seeded, target, seq, payload) as where:
        before = seeded.files()
        try:
            loaded = _read_victim(seeded, target)
            event(f"{kind}: loaded")
        except CheckpointError as exc:
            event(f"{kind}: refused")
            # A tampered data object is caught by its hash, before it is decoded; a marker
            # whose size no longer matches is reported on the data object it names.
            data = str(seeded.data_path(seq).relative_to(seeded.root))
            _check_refusal(exc, {where, data} if target == "commit" else {where})
        else:
            # Only a well-formed record, or one whose values merely changed, may load.
            assert kind in ("shape", "pickle-as-bytes") or target == "commit", kind
            assert target != "data"
            _check_typed(loaded)
        # The other run, and the parts of this run that were not damaged, read as before.
        for run_id in ("other",):
            assert seeded.store.read_manifest(run_id) == seeded.manifests[run_id]
            assert seeded.store.load_steps(run_id) == seeded.steps[run_id]
            assert status_from_checkpoint(seeded.store, run_id) == seeded.statuses[run_id]
        if target in ("manifest", "status"):
            assert seeded.store.load_steps("victim") == seeded.steps["victim"]
        else:
            assert seeded.store.read_manifest("victim") == seeded.manifests["victim"]
            for good in {0, 1, 2} - {seq}:
                assert seeded.store.read_step("victim", good) == seeded.steps["victim"][good]
        assert seeded.store.list_runs() == ["other", "victim"]
        # Reading deleted, rewrote and executed nothing.
        assert seeded.files() == before
        assert not seeded.flag.exists()


RECORD_MAPS = st.dictionaries(
    st.sampled_from(["type", "version", "run_id", "seq", "node", "status"]), PLAIN, min_size=2
).map(lambda record: msgpack.packb(record, use_bin_type=True))


@settings(FUZZ, max_examples=300)
@given(st.one_of(st.binary(max_size=200), RECORD_MAPS), st.sampled_from(["manifest", "step"]))
def test_random_bytes_and_maps_unpack_to_nothing_but_a_checkpoint_error(
    raw: bytes, kind: str
) -> None:
    # A map's "type" may be a list: looking it up in a dict raised TypeError (unhashable).
    with pytest.raises(CheckpointError) as info:
        unpack(raw, kind, "run-1", "memory://x/run-1/obj")
    assert info.value.run_id == "run-1" and "memory://x/run-1/obj" in info.value.message


# --- store URLs and checkpoint URIs ----------------------------------------------------------

_USERINFO = st.sampled_from(
    [
        "",
        f"user:{CANARY}@",
        f":{CANARY}@",
        f"{CANARY}@",
        f"u:pa/{CANARY}@",  # unescaped '/', '?', '#' and '@' in the password
        f"u:pa?{CANARY}@",
        f"u:pa#{CANARY}@",
        f"u:p@{CANARY}@",
        f"u:{CANARY[:6]}%40{CANARY[6:]}@",
    ]
)
_QUERY = st.sampled_from(
    [
        "",
        "?",
        "?&&=",
        "?=x",
        "?ttl=5",
        "?ttl=5&ttl=6",
        "?ttl=²",
        "?ttl=" + "9" * 5000,
        "?namespace=a%00b",
        "?region=us-east-1",
        "?endpoint_override=127.0.0.1:9000&scheme=http",
        "?endpoint_override=host:99999",
        "?endpoint_override=host:0",
        "?endpoint_override=",
        "?connect_timeout=nan",
        "?connect_timeout=-1",
        "?load_frequency=" + "9" * 50,
        "?scheme=ftp",
        "?location=EU&retry_limit_seconds=0",
        f"?password={CANARY}",
        f"?region=x&secret_key={CANARY}",
        "?x=%0A",
    ]
)


def _url(scheme: str, sep: str, userinfo: str, host: str, path: str, query: str, frag: str):
    return f"{scheme}{sep}{userinfo}{host}{path}{query}{frag}"


NEAR_MISS = st.builds(
    _url,
    st.sampled_from(["s3", "gs", "gcs", "file", "memory", "S3", "ftp", "", "http", "redis"]),
    st.sampled_from(["://", ":/", ":", ":///", "//", ":////"]),
    _USERINFO,
    st.sampled_from(
        [
            *("bucket", "", "b", "my-bucket.eu", "Bad_Bucket", "b%41cket", "bucket:9000"),
            *("[::1]", "[::1", "bu cket", "bu\x00cket", "localhost", "h\ttab", "ünï", "x" * 300),
            "host:²",
        ]
    ),
    st.sampled_from(
        [
            *("", "/", "/runs", "/a/../b", "/%2e%2e/x", "/a//b", "/x%00y", "/tmp/x", "/ünï"),
            *("/a%2Fb", "/~nosuchuser-gecko/x", "/..", "/./x", "/0", "/abc", "/0/1", "/x\x00y"),
        ]
    ),
    _QUERY,
    st.sampled_from(["", "#frag"]),
)
URL_TEXT = st.one_of(NEAR_MISS, st.text(max_size=60), st.from_regex(r"[a-z0-9]{0,6}://.{0,40}"))
STORE_URL = st.one_of(
    st.builds(
        _url,
        # Mostly known schemes: an unknown one scans the installed packages' entry points.
        st.sampled_from(["memory", "sqlite", "redis", "rediss", "lancedb", "REDIS", "postgres"]),
        st.sampled_from(["://", ":", ":///", "//"]),
        _USERINFO,
        st.sampled_from(["", "localhost", "host:6379", "[::1]:7000", "[::1", "h%00st", "host:²"]),
        st.sampled_from(["", "/", "/0", "/abc", "/0/1", "/x.db", "/~nosuchuser-gecko/x", "/a\x00"]),
        _QUERY,
        st.sampled_from(["", "#frag"]),
    ),
    st.text(max_size=40),
)


def _assert_no_password(err: BaseException, url: str) -> None:
    if CANARY not in url:
        return
    texts = [err.message, err.hint or "", str(err.context), repr(err)]
    texts.append(str(pickle.loads(pickle.dumps(err))))
    for text in texts:
        assert CANARY not in text and CANARY[:6] + "%40" not in text, text


@settings(FUZZ, max_examples=300)
@given(URL_TEXT)
def test_checkpoint_uris_give_a_location_or_a_user_error(uri: str) -> None:
    try:
        location = parse_uri(uri)
    except UserError as exc:
        assert type(exc) is UserError, repr(exc)
        _assert_no_password(exc, uri)
        return
    # Accepted: a root that every backend can use, and no credential anywhere in it.
    assert isinstance(location, Location) and CANARY not in repr(location)
    assert not any(ch < " " or ch == "\x7f" for ch in location.root)
    if location.scheme in ("s3", "gs"):
        bucket, _, prefix = location.root.partition("/")
        assert bucket and ":" not in bucket and "%" not in bucket
        assert not {"", ".", ".."} & set(prefix.split("/")) if prefix else True
    elif location.scheme == "file":
        assert os.path.isabs(location.root)
    assert CheckpointStore(uri).uri == uri.strip()


@settings(FUZZ, max_examples=250)
@given(STORE_URL, st.sampled_from(["session", "vector"]))
def test_store_urls_give_a_store_or_a_typed_error(url: str, kind: str) -> None:
    # Nothing touches the disk when a store is built: they connect at first use.
    build = session_store_from_url if kind == "session" else vector_store_from_url
    try:
        store = build(url)
    except (UserError, ConfigurationError) as exc:
        assert type(exc) in (UserError, ConfigurationError), repr(exc)
        _assert_no_password(exc, url)
        return
    assert CANARY not in repr(store)
    assert not any(ch < " " for ch in str(getattr(store, "path", getattr(store, "uri", ""))))


@pytest.mark.parametrize(
    ("uri", "part"),
    [
        ("s3:///runs", "names no bucket"),
        ("s3://bucket:9000/runs", "bucket name 'bucket:9000'"),
        ("gs://b%41d/runs", "bucket name 'b%41d'"),
        ("s3://bucket/a/../b", "'..' path segment"),
        ("s3://bucket/a//b", "empty path segment"),
        ("s3://bucket/%2e%2e/b", "'..' path segment"),
        ("file:///tmp/a%00b", "control character '\\x00' in its path"),
        ("/tmp/a\x00b", "control character '\\x00' in its path"),
        ("s3://buc\nket/runs", "control character '\\n'"),
        ("s3://bucket/r?endpoint_override=h:99999", "the port 99999"),
        ("s3://bucket/r?connect_timeout=nan", "'connect_timeout'"),
        ("gs://bucket/r?colour=blue", "unknown query parameter 'colour'"),
        ("gs://bucket/r?retry_limit_seconds=0", "'retry_limit_seconds'"),
        ("s3:/bucket/runs", "lacks '//'"),
        ("s3://bucket/r?region=a&region=b", "repeats the query parameter 'region'"),
    ],
)
def test_each_near_miss_uri_names_its_bad_part(uri: str, part: str) -> None:
    with pytest.raises(UserError) as info:
        CheckpointStore(uri)
    assert part in info.value.message


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://user:pa/{CANARY}@bucket/runs",  # was accepted, the password in its root
        f"s3://u:pa?{CANARY}@bucket/runs",
        f"s3:///u:{CANARY}@bucket",
        f"file://user:pa/{CANARY}@host/x",
    ],
)
def test_a_password_in_a_checkpoint_uri_is_refused_unseen(uri: str) -> None:
    with pytest.raises(UserError) as info:
        CheckpointStore(uri)
    _assert_no_password(info.value, uri)


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("sqlite:///a\x00b.db", "control character '\\x00'"),
        ("redis://h%00st/0", "control character '\\x00'"),
        ("redis://host:²/0", "the port '²'"),
        ("redis://host:" + "9" * 5000 + "/0", "is not a number from 1 to 65535"),
        ("redis://host/0?ttl=²", "the ttl '²'"),
        (f"lancedb://u:{CANARY}@host/x", "user or password"),
        ("sqlite:///~nosuchuser-gecko/s.db", "could not build"),
    ],
)
def test_each_near_miss_store_url_names_its_bad_part(url: str, part: str) -> None:
    build = vector_store_from_url if url.startswith("lancedb") else session_store_from_url
    with pytest.raises((UserError, ConfigurationError)) as info:
        build(url)
    assert part in info.value.message and len(info.value.message) < 1000
    _assert_no_password(info.value, url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://host:1/0?password={CANARY}",  # a secret-named query parameter
        f"redis:user:{CANARY}@host/0",  # no '//'
        f"redis:///user:{CANARY}@host",  # a '/' too many
    ],
)
def test_a_password_in_a_store_url_is_never_echoed(url: str) -> None:
    with pytest.raises(UserError) as info:
        session_store_from_url(url)
    _assert_no_password(info.value, url)


# --- Next targets ------------------------------------------------------------------------------

NODES = ["a", "b", "c"]
TARGET = st.one_of(
    st.sampled_from(NODES),
    st.text(max_size=12),
    st.just(""),
    st.none(),
    st.integers(),
    st.floats(),
    st.binary(max_size=4),
    st.lists(st.sampled_from(NODES), max_size=3),  # duplicates too
    st.integers(0, 200_000).map(lambda n: ["a"] * n),  # huge
    st.tuples(st.sampled_from(NODES)),
    st.dictionaries(st.sampled_from(NODES), st.none(), max_size=2),
    st.just("x" * 100_000),
)


def _jump_graph(target: Any) -> WorkflowGraph:
    def first(ctx):
        return "done" if ctx.input == "jumped" else Next(target, "jumped")

    def rest(ctx):
        return ctx.input

    return (
        WorkflowGraph("jumps")
        .add_node("a", first)
        .add_node("b", rest)
        .add_node("c", rest)
        .add_edge("a", "b")
        .add_edge("b", "c")
    )


async def _run(graph: WorkflowGraph, store: CheckpointStore) -> RunEngine:
    engine = RunEngine(graph, "jump-run", store, LocalExecutor(store))
    engine.open(None)
    await engine.run()
    return engine


@settings(FUZZ, max_examples=120)
@given(TARGET)
def test_a_next_target_is_a_node_name_or_the_visit_fails_naming_it(target: Any) -> None:
    store = CheckpointStore(f"memory://fuzz-next-{uuid.uuid4().hex}")
    engine = asyncio.run(_run(_jump_graph(target), store))
    steps = store.load_steps("jump-run")
    if isinstance(target, str) and target in NODES:
        assert engine.outcome == "succeeded", engine.failure
        assert steps[0].next == Next(target, "jumped")
        return
    assert engine.outcome == "failed"
    err = engine.failure
    assert isinstance(err, WorkflowError) and err.node == "a" and err.run_id == "jump-run"
    text = str(err)
    assert "['a', 'b', 'c']" in text and len(text) < 2000  # the valid ones, clipped target
    if isinstance(target, str):
        assert f"unknown node {repr(target)[:30]}" in text
    else:
        assert f"returned Next(node={repr(target)[:1]}" in text
        assert f"must be a node's name (a str), not of type {type(target).__name__}" in text
    assert steps == []  # the bad jump was never committed


def test_a_jump_in_a_huge_graph_lists_some_valid_nodes() -> None:
    graph = WorkflowGraph("big").add_node("a", lambda ctx: Next("nope"))
    for i in range(500):
        graph.add_node(f"n{i:03d}", lambda ctx: None).add_edge("a", f"n{i:03d}")
    store = CheckpointStore(f"memory://fuzz-big-{uuid.uuid4().hex}")
    engine = asyncio.run(_run(graph, store))
    text = str(engine.failure)
    assert "unknown node 'nope'" in text and "(and 471 more)" in text and len(text) < 2000


def test_a_next_inside_a_value_is_refused_not_stored_as_a_dict() -> None:
    graph = WorkflowGraph("nested").add_node("a", lambda ctx: [Next("a")]).add_node("b", str)
    store = CheckpointStore(f"memory://fuzz-nested-{uuid.uuid4().hex}")
    engine = asyncio.run(_run(graph.add_edge("a", "b"), store))
    assert engine.outcome == "failed" and "value[0]: it is a Next('a', ...) jump" in str(
        engine.failure
    )
    assert store.load_steps("jump-run") == []


@pytest.mark.parametrize("bad", [["a"], None, 3, ("a",), {"a": 1}])
def test_edge_and_entry_names_must_be_strings(bad: Any) -> None:
    graph = WorkflowGraph("w").add_node("a", str).add_node("b", str)
    with pytest.raises(UserError, match=r"not a node name.*\['a', 'b'\]"):
        graph.add_edge("a", bad)
    with pytest.raises(UserError, match="set_entry"):
        graph.set_entry(bad)
    graph.add_edge("a", "b").validate()  # nothing bad was kept (validate raised TypeError)


# --- --input @file ----------------------------------------------------------------------------

FLOW = """
from gecko_actors.workflow import Workflow

workflow = Workflow("fuzz-input").add_node("a", str)
"""


class _Started(Exception):
    """Raised instead of starting the run: the input was accepted."""


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-input")
    (folder / "flow.py").write_text(FLOW)
    return folder


@contextmanager
def cli_without_ray(**env: str) -> Iterator[list[Any]]:
    """The CLI's ``run``, stopped where Ray would start: the accepted inputs are collected."""
    accepted: list[Any] = []

    def start(self, input, **kwargs):
        accepted.append(input)
        raise _Started

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("gecko_actors.workflow.run.Workflow.start", start)
        patch.setattr("gecko_actors.cli._connect", lambda address: None)  # no Ray
        for name, value in env.items():
            patch.setenv(name, value)
        yield accepted


def run_input(folder: Path, spec: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", f"{folder / 'flow.py'}:workflow", "--input", spec])
    return result.exit_code, result.output


def _json_doc() -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=10,
    )


@st.composite
def input_files(draw: st.DrawFn) -> tuple[str, bytes]:
    doc = json.dumps(draw(_json_doc()), ensure_ascii=draw(st.booleans())).encode()
    kind = draw(st.sampled_from(["json", "truncated", "not-utf8", "nan", "deep", "bignum"]))
    if kind == "truncated":
        return kind, doc[: draw(st.integers(0, max(0, len(doc) - 1)))]
    if kind == "not-utf8":
        at = draw(st.integers(0, len(doc)))
        return kind, doc[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + doc[
            at:
        ]
    if kind == "nan":
        word = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]))
        return kind, f'{{"x": [{word}]}}'.encode()
    if kind == "deep":
        depth = draw(st.sampled_from([150, 250, 1_000, 100_000]))
        return kind, b"[" * depth + b"]" * depth
    if kind == "bignum":
        return kind, draw(st.sampled_from([b"9" * 5000, b"1" + b"0" * 30, b'"\\ud800"']))
    return kind, doc


def _oracle(raw: bytes) -> tuple[bool, Any]:
    """Whether ``raw`` is an acceptable input (UTF-8 JSON, no NaN or Infinity, storable in a
    checkpoint), and its value."""

    def refuse(token: str) -> Any:
        raise ValueError(token)

    def finite(text: str) -> float:
        return float(text) if math.isfinite(float(text)) else refuse(text)

    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=refuse, parse_float=finite)
        encode_value(value)
    except (ValueError, RecursionError, UserError):
        return False, None
    return True, value


@settings(FUZZ, max_examples=100)
@given(input_files())
def test_input_files_are_json_data_or_a_one_line_user_error(
    input_dir: Path, case: tuple[str, bytes]
) -> None:
    kind, raw = case
    path = input_dir / f"input-{uuid.uuid4().hex[:8]}.json"
    path.write_bytes(raw)
    with cli_without_ray() as accepted:
        code, out = run_input(input_dir, f"@{path}")
    path.unlink()
    ok, value = _oracle(raw)
    event(f"{kind}: {'accepted' if ok else 'refused'}")
    assert code == 1 and out.count("\n") == 1 and "Traceback" not in out, out
    if ok:
        assert "_Started" in out and accepted == [value], (kind, out)
        return
    assert out.startswith("error: ") and accepted == [], (kind, out)
    assert str(path) in out or "--input" in out, out
    if kind == "nan":
        assert "not finite" in out


def test_input_file_mistakes_name_the_file_and_the_problem(input_dir: Path) -> None:
    (input_dir / "a-folder").mkdir(exist_ok=True)
    (input_dir / "nan.json").write_text('{"score": NaN}')
    (input_dir / "latin1.json").write_bytes('"café"'.encode("latin-1"))
    (input_dir / "truncated.json").write_text('{"a": [1, 2')
    (input_dir / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    cases = {
        "missing.json": "does not exist",
        "a-folder": "is a folder, not a file",
        "nan.json": "the number 'NaN', which is not finite",
        "latin1.json": "is not UTF-8 text: byte 0xe9 at offset 4",
        "truncated.json": "is not valid JSON",
        "deep.json": "nested too deeply",
    }
    with cli_without_ray() as accepted:
        for name, problem in cases.items():
            code, out = run_input(input_dir, f"@{input_dir / name}")
            assert code == 1 and problem in out and name in out, out
            assert out.count("\n") == 1, out
        code, out = run_input(input_dir, "@")
        assert code == 1 and "names no file" in out
    assert accepted == []


def test_input_files_over_the_size_cap_are_refused_before_reading(input_dir: Path) -> None:
    sparse = input_dir / "huge.json"
    with sparse.open("wb") as out:
        out.truncate(11 * 2**20)  # 11 MiB of holes: no disk used
    small = input_dir / "small.json"
    small.write_text(json.dumps(["x" * 200]))
    with cli_without_ray() as accepted:
        code, out = run_input(input_dir, f"@{sparse}")
        assert code == 1 and f"is {11 * 2**20} bytes" in out and "GECKO_MAX_INPUT_BYTES" in out
    with cli_without_ray(GECKO_MAX_INPUT_BYTES="100") as accepted:
        code, out = run_input(input_dir, f"@{small}")
        assert code == 1 and "over the cap of 100 bytes" in out
        if os.path.exists("/dev/zero"):  # endless, with no size: never read at all
            code, out = run_input(input_dir, "@/dev/zero")
            assert code == 1 and "is a character device, not a regular file" in out
    with cli_without_ray(GECKO_MAX_INPUT_BYTES="1000") as accepted:
        code, out = run_input(input_dir, f"@{small}")
    assert "_Started" in out and accepted == [["x" * 200]]
    sparse.unlink()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX feature")
def test_an_input_fifo_is_refused_without_waiting_for_a_writer(input_dir: Path) -> None:
    fifo = input_dir / "input.fifo"
    os.mkfifo(fifo)
    try:
        with cli_without_ray() as accepted:
            code, out = run_input(input_dir, f"@{fifo}")  # opening it used to block forever
        assert code == 1 and "is a FIFO (named pipe), not a regular file" in out, out
        assert accepted == []
    finally:
        fifo.unlink()


@pytest.mark.parametrize("cap", ["9" * 5000, "²", "-1", "0", "1e6"])
def test_an_unusable_input_cap_is_a_user_error_naming_the_variable(
    input_dir: Path, cap: str
) -> None:
    small = input_dir / "tiny.json"
    small.write_text("[1]")
    with cli_without_ray(GECKO_MAX_INPUT_BYTES=cap) as accepted:
        code, out = run_input(input_dir, f"@{small}")
    assert code == 1 and "GECKO_MAX_INPUT_BYTES=" in out and "not a number of bytes" in out, out
    assert accepted == []


def test_a_generous_input_cap_costs_no_memory_up_front(input_dir: Path) -> None:
    small = input_dir / "small-under-a-huge-cap.json"
    small.write_text('{"a": 1}')
    # A cap of 999 TB used to be reserved by read(cap + 1): a MemoryError on a 8-byte file.
    with cli_without_ray(GECKO_MAX_INPUT_BYTES="999999999999999") as accepted:
        _, out = run_input(input_dir, f"@{small}")
    assert "_Started" in out and accepted == [{"a": 1}], out


def test_an_input_path_with_a_nul_is_a_user_error(input_dir: Path) -> None:
    with cli_without_ray() as accepted:
        code, out = run_input(input_dir, "@bad\x00name.json")
    assert code == 1 and "not a usable file name" in out and accepted == [], out
