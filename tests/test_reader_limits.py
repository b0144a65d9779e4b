"""The readers' size cap: a file over it is refused before it is loaded, a file that grows
while it is read is cut off one byte past it, and only regular files are read at all.

Big files are sparse (``truncate``): 10 GiB of them cost no disk and, being refused, no memory.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
import threading
from pathlib import Path

import pytest
from test_knowledge import _tiny_pdf

from gecko_actors.exceptions import UserError
from gecko_actors.knowledge import DEFAULT_MAX_FILE_BYTES, read_document, read_documents

TEN_GIB = 10 * 1024**3
MIB = 1024 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (all zeros, never written)."""
    with open(path, "wb") as out:
        out.truncate(size)
    return path


# --- the cap, checked before loading ---------------------------------------------------------


def test_a_10_gib_file_is_refused_naming_it_its_size_and_the_cap(root: Path):
    big = sparse(root / "huge.txt", TEN_GIB)
    with pytest.raises(UserError) as info:
        read_document(big, roots=[root])
    message = str(info.value)
    assert str(big) in message
    assert "10737418240 bytes (10.0 GiB)" in message
    assert f"{DEFAULT_MAX_FILE_BYTES} bytes (50.0 MiB)" in message
    assert "max_bytes=" in message and "max_file_bytes=" in message  # how to raise it
    err = pickle.loads(pickle.dumps(info.value))  # crosses Ray's process boundary whole
    assert (err.size, err.max_bytes, err.path) == (TEN_GIB, DEFAULT_MAX_FILE_BYTES, str(big))


def test_the_default_cap_is_50_mib(root: Path):
    assert DEFAULT_MAX_FILE_BYTES == 50 * MIB
    just_over = sparse(root / "over.txt", DEFAULT_MAX_FILE_BYTES + 1)
    with pytest.raises(UserError, match=r"is 52428801 bytes \(50\.0 MiB\), over the cap"):
        read_document(just_over, roots=[root])


def _pdf(root: Path) -> Path:
    path = root / "doc.pdf"
    path.write_bytes(_tiny_pdf(["Alpha beta gamma"], title="Tiny"))
    return path


def _html(root: Path) -> Path:
    path = root / "page.html"
    path.write_text("<html><body><p>Alpha beta gamma</p></body></html>")
    return path


def _json(root: Path) -> Path:
    path = root / "data.json"
    path.write_text(json.dumps({"text": "Alpha beta gamma"}))
    return path


@pytest.mark.parametrize("make", [_pdf, _html, _json], ids=["pdf", "html", "json"])
def test_every_reader_is_capped_at_exactly_max_bytes(root: Path, make):
    path = make(root)
    size = path.stat().st_size
    assert "Alpha beta gamma" in read_document(path, roots=[root], max_bytes=size).text
    with pytest.raises(UserError, match=f"is {size} bytes.*over the cap of {size - 1} bytes"):
        read_document(path, roots=[root], max_bytes=size - 1)


@pytest.mark.parametrize("extension", [".pdf", ".html", ".json"])
def test_a_huge_pdf_html_or_json_file_is_refused_before_its_reader_runs(root: Path, extension: str):
    big = sparse(root / f"huge{extension}", TEN_GIB)
    with pytest.raises(UserError, match=r"10\.0 GiB.*over the cap") as info:
        read_document(big, roots=[root])
    # Not "could not read": the parser never saw the bytes.
    assert "could not read" not in str(info.value)


def test_read_documents_applies_the_cap_to_each_file(root: Path):
    (root / "small.txt").write_text("small")
    sparse(root / "big.txt", 2 * MIB)
    with pytest.raises(UserError, match=r"big\.txt.*over the cap of 1048576 bytes"):
        read_documents(root, roots=[root], max_bytes=MIB)
    (root / "big.txt").unlink()
    assert [d.text for d in read_documents(root, roots=[root], max_bytes=MIB)] == ["small"]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_an_invalid_cap_is_a_user_error_naming_it(root: Path, bad):
    path = root / "a.txt"
    path.write_text("a")
    with pytest.raises(UserError, match="max_bytes must be a positive int"):
        read_document(path, roots=[root], max_bytes=bad)
    with pytest.raises(UserError, match="max_bytes must be a positive int"):
        read_documents(root, roots=[root], max_bytes=bad)


# --- checked while reading: files that grow, special files -----------------------------------


def test_a_file_that_grows_after_the_size_check_is_cut_off_past_the_cap(root, monkeypatch):
    # /dev/zero, a log being written, a file replaced between the check and the read: the
    # size the check saw (0, as /dev/zero reports) says nothing of how much a read returns.
    growing = sparse(root / "growing.txt", 64 * MIB)
    real_fstat = os.fstat

    def stale_fstat(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        return os.stat_result((info.st_mode, *info[1:6], 0, *info[7:10]))  # st_size = 0

    monkeypatch.setattr(os, "fstat", stale_fstat)
    with pytest.raises(UserError, match=r"grew past the cap of 1048576 bytes .*while it was read"):
        read_document(growing, roots=[root], max_bytes=MIB)


def test_a_character_device_is_refused_before_a_byte_is_read(root, monkeypatch):
    # Making a real device node needs privileges a test may not have: report one instead.
    path = root / "zero.txt"
    path.write_text("would be endless zeros")
    real_fstat = os.fstat

    def as_device(fd: int) -> os.stat_result:
        info = real_fstat(fd)
        return os.stat_result((stat.S_IFCHR | 0o666, *info[1:]))

    monkeypatch.setattr(os, "fstat", as_device)
    with pytest.raises(UserError, match="is a character device, not a regular file"):
        read_document(path, roots=[root])


def test_a_fifo_is_refused_without_waiting_for_a_writer(root: Path):
    fifo = root / "pipe.txt"
    os.mkfifo(fifo)
    outcome: list[BaseException | object] = []

    def read() -> None:
        try:
            outcome.append(read_document(fifo, roots=[root]))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():
        # It is blocked opening the pipe: give it a writer that closes at once, so the test
        # fails on the assertion below instead of hanging.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], UserError), outcome
    assert "is a FIFO (named pipe), not a regular file" in str(outcome[0])
    assert str(fifo) in str(outcome[0])


# --- ingest passes its cap to the readers on Ray ---------------------------------------------


def ingest_module():
    """gecko_actors.ingestion imports Ray: only the tests that need it pay for the import."""
    import gecko_actors.ingestion

    return gecko_actors.ingestion


def test_ingest_refuses_an_invalid_cap_before_starting_anything(root: Path):
    with pytest.raises(UserError, match=r"max_file_bytes must be a positive int .*got 0"):
        ingest_module().ingest(root, store=object(), max_file_bytes=0)


@pytest.mark.usefixtures("ray_session")
def test_ingest_reports_a_file_over_its_cap_and_ingests_the_rest(root: Path, tmp_path: Path):
    from gecko_actors import LanceVectorStore

    (root / "small.md").write_text("# Small\n\nA short note about lizards.")
    sparse(root / "huge.txt", TEN_GIB)
    store = LanceVectorStore(tmp_path / "vectors")
    summary = ingest_module().ingest(root, store=store, embed_actors=1, max_file_bytes=MIB)
    assert summary.files == 2 and summary.ingested == 1
    huge = str((root / "huge.txt").resolve())
    assert list(summary.failed) == [huge]
    assert "over the cap of 1048576 bytes" in summary.failed[huge]
