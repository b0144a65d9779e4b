"""Knowledge: Document, the readers (and the roots they are confined to), the splitter."""

from __future__ import annotations

import ast
import hashlib
import io
import itertools
import json
import pickle
import random
import sys
from pathlib import Path

import pytest

from gecko_actors.core.memory import TokenMemory, _encoding
from gecko_actors.exceptions import ConfigurationError, UserError
from gecko_actors.knowledge import (
    Document,
    RecursiveSplitter,
    expand_paths,
    known_extensions,
    read_document,
    read_documents,
    register_reader,
)
from gecko_actors.knowledge import readers as readers_module


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


# --- Document -------------------------------------------------------------------------------


def test_document_copies_metadata_and_round_trips_through_json():
    metadata = {"source": "a.txt"}
    doc = Document("a.txt", "hello", metadata)
    metadata["source"] = "changed"
    assert doc.metadata == {"source": "a.txt"}
    again = Document.from_dict(json.loads(json.dumps(doc.to_dict())))
    assert again == doc
    assert pickle.loads(pickle.dumps(doc)) == doc


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"id": "", "text": "x"}, "id"),
        ({"id": 3, "text": "x"}, "id"),
        ({"id": "a", "text": b"x"}, "text"),
        ({"id": "a", "text": "x", "metadata": ["source"]}, "metadata"),
    ],
)
def test_document_rejects_bad_fields(kwargs, named):
    with pytest.raises(UserError, match=named):
        Document(**kwargs)


def test_document_from_dict_names_missing_keys():
    with pytest.raises(UserError, match="'text'"):
        Document.from_dict({"id": "a"})


# --- readers: one per format ----------------------------------------------------------------


def test_text_reader_sets_id_source_type_and_hash(root):
    raw = "\ufeffline one\r\nline two\rline three\n".encode()
    path = write(root / "notes" / "a.txt", raw)
    doc = read_document(path, roots=[root])
    assert doc.id == "notes/a.txt"
    assert doc.text == "line one\nline two\nline three\n"  # BOM dropped, newlines unified
    assert doc.metadata == {
        "source": "notes/a.txt",
        "type": "txt",
        "content_hash": hashlib.sha256(raw).hexdigest(),
    }


def test_ids_are_stable_across_reads_cwd_and_root_order(root, monkeypatch):
    path = write(root / "guide" / "intro.md", "# Intro\n\ntext\n")
    first = read_document(path, roots=[root])
    monkeypatch.chdir(root / "guide")
    again = read_document("intro.md", roots=[root / "guide", root])  # nested roots: innermost
    assert first.id == "guide/intro.md"
    assert again.id == "intro.md"
    assert read_document("intro.md", roots=[root, root / "guide"]).id == "intro.md"
    assert read_document(path, roots=root) == first  # a single root needs no list
    assert read_document(path, roots=[path]).id == "intro.md"  # a root may be one file
    write(path, "# Intro\n\nchanged\n")
    changed = read_document(path, roots=[root])
    assert changed.id == first.id
    assert changed.metadata["content_hash"] != first.metadata["content_hash"]


def test_markdown_reader_takes_the_first_heading_as_title(root):
    text = "Some preface\n\n## Install the tool ##\n\n# Later heading\n"
    doc = read_document(write(root / "guide.md", text), roots=[root])
    assert doc.text == text
    assert doc.metadata["title"] == "Install the tool"
    assert doc.metadata["type"] == "md"
    assert "title" not in read_document(write(root / "plain.md", "no heading"), roots=root).metadata


def test_python_reader_keeps_the_source(root):
    source = 'def f(x):\n    """Double."""\n    return 2 * x\n'
    doc = read_document(write(root / "pkg" / "mod.py", source), roots=[root])
    assert doc.text == source
    assert (doc.id, doc.metadata["type"]) == ("pkg/mod.py", "py")


def test_json_reader_pretty_prints(root):
    data = {"name": "Zoë", "items": [1, 2, {"deep": True}]}
    doc = read_document(write(root / "d.json", json.dumps(data)), roots=[root])
    assert json.loads(doc.text) == data
    assert "Zoë" in doc.text  # not \u-escaped
    assert '\n  "items": [\n' in doc.text


def test_json_reader_names_an_invalid_file(root):
    path = write(root / "bad.json", '{"a": ')
    with pytest.raises(UserError, match=r"bad\.json") as info:
        read_document(path, roots=[root])
    assert info.value.path == str(path)


def test_html_reader_keeps_visible_text_only(root):
    html = """<!doctype html><html><head><title>The  Page</title>
    <style>body { color: red }</style><script>var secret = "hidden";</script></head>
    <body><h1>Heading</h1><p>First &amp; <b>bold</b>   paragraph.</p>
    <script>alert("no")</script><noscript>enable js</noscript>
    <ul><li>one</li><li>two</li></ul><p>Last<br>line</p></body></html>"""
    doc = read_document(write(root / "page.html", html), roots=[root])
    assert doc.metadata["title"] == "The Page"
    assert doc.text == "Heading\n\nFirst & bold paragraph.\n\none\ntwo\n\nLast\nline"
    for hidden in ("color: red", "secret", "alert", "enable js", "The Page"):
        assert hidden not in doc.text


def _tiny_pdf(pages: list[str], title: str) -> bytes:
    pypdf = pytest.importorskip("pypdf", reason="pypdf (the [pdf] extra) is not installed")
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = pypdf.PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for text in pages:
        page = writer.add_blank_page(width=300, height=200)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
    writer.add_metadata({"/Title": title})
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def test_pdf_reader_reads_pages_and_the_splitter_numbers_them(root):
    data = _tiny_pdf(["Alpha beta gamma", "Delta epsilon zeta"], title="Tiny")
    doc = read_document(write(root / "doc.pdf", data), roots=[root])
    assert doc.text == "Alpha beta gamma\n\nDelta epsilon zeta"
    assert doc.metadata["pages"] == 2
    assert doc.metadata["page_starts"] == [0, len("Alpha beta gamma") + 2]
    assert doc.metadata["title"] == "Tiny"
    chunks = RecursiveSplitter(chunk_size=18, overlap=0).split(doc)
    assert [(c.text, c.metadata["page"]) for c in chunks] == [
        ("Alpha beta gamma", 1),
        ("Delta epsilon zeta", 2),
    ]
    assert all("page_starts" not in c.metadata for c in chunks)


def test_pdf_without_pypdf_says_which_extra_to_install(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdf", None)  # makes `import pypdf` fail
    path = write(root / "doc.pdf", b"%PDF-1.4\n")
    with pytest.raises(ConfigurationError, match=r'pip install "gecko-actors\[pdf\]"') as info:
        read_document(path, roots=[root])
    assert isinstance(info.value, UserError)


def test_undecodable_text_is_refused_naming_the_file(root):
    path = write(root / "latin.txt", "café".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin\.txt.*utf-8"):
        read_document(path, roots=[root])


# --- readers: the roots ---------------------------------------------------------------------


def test_path_traversal_is_refused(root, monkeypatch):
    secret = write(root.parent / "etc" / "passwd", "root:x:0:0")
    monkeypatch.chdir(root)
    for attempt in ("../../etc/passwd", "../etc/passwd", str(root / ".." / "etc" / "passwd")):
        with pytest.raises(UserError, match="outside the allowed roots") as info:
            read_document(attempt, roots=[root])
        assert attempt in str(info.value)
        assert str(root) in str(info.value)
    assert secret.read_text() == "root:x:0:0"  # it exists: refusal is not "file not found"


def test_refused_path_error_pickles_with_its_context(root):
    with pytest.raises(UserError) as info:
        read_document("../../etc/passwd", roots=[root])
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)
    assert again.path == "../../etc/passwd"
    assert again.roots == [str(root)]


def test_a_sibling_folder_sharing_the_root_prefix_is_outside(root):
    sibling = write(root.parent / (root.name + "2") / "x.txt", "not yours")
    with pytest.raises(UserError, match="outside the allowed roots"):
        read_document(sibling, roots=[root])


def test_dot_dot_that_stays_inside_is_allowed(root):
    write(root / "a.txt", "inside")
    (root / "sub").mkdir()
    assert read_document(root / "sub" / ".." / "a.txt", roots=[root]).id == "a.txt"


def test_symlink_pointing_outside_is_refused(root):
    outside = write(root.parent / "outside" / "secret.txt", "secret")
    link = root / "innocent.txt"
    link.symlink_to(outside)
    (root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    for path in (link, root / "linked_dir" / "secret.txt"):
        with pytest.raises(UserError, match="outside the allowed roots"):
            read_document(path, roots=[root])
    inside = write(root / "real.txt", "ok")
    (root / "alias.txt").symlink_to(inside)
    assert read_document(root / "alias.txt", roots=[root]).id == "real.txt"


def test_roots_must_be_given_and_exist(root):
    path = write(root / "a.txt", "x")
    with pytest.raises(UserError, match="no roots"):
        read_document(path, roots=[])
    with pytest.raises(UserError, match="does not exist"):
        read_document(path, roots=[root / "missing"])


def test_missing_files_and_folders_are_named(root):
    with pytest.raises(UserError, match=r"nope\.txt' does not exist"):
        read_document(root / "nope.txt", roots=[root])
    (root / "folder.txt").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        read_document(root / "folder.txt", roots=[root])


def test_unknown_extension_lists_the_known_ones(root):
    path = write(root / "table.csv", "a,b\n1,2\n")
    with pytest.raises(UserError) as info:
        read_document(path, roots=[root])
    message = str(info.value)
    assert "'.csv'" in message and "table.csv" in message
    for known in (".txt", ".md", ".py", ".json", ".html", ".pdf"):
        assert known in message
    assert "register_reader" in message
    with pytest.raises(UserError, match="'\\(none\\)'"):
        read_document(write(root / "Makefile", "all:"), roots=[root])


def test_register_reader_and_per_call_readers(root, monkeypatch):
    monkeypatch.setattr(readers_module, "_READERS", dict(readers_module._READERS))
    path = write(root / "table.CSV", "a,b\n1,2\n")
    doc = read_document(path, roots=[root], readers={".csv": lambda b: b.decode().upper()})
    assert doc.text == "A,B\n1,2\n"
    assert ".csv" not in known_extensions()  # per call only
    register_reader(".csv", lambda b: (b.decode(), {"rows": 2, "source": "ignored"}))
    doc = read_document(path, roots=[root])
    assert doc.metadata["rows"] == 2
    assert doc.metadata["source"] == "table.CSV"  # the reader cannot override the basics
    assert ".csv" in known_extensions()
    with pytest.raises(UserError, match=r"'\.ext'"):
        register_reader("csv", str)
    with pytest.raises(UserError, match="not callable"):
        register_reader(".csv", "not a function")  # type: ignore[arg-type]
    register_reader(".bad", lambda b: 42)
    with pytest.raises(UserError, match="returned int"):
        read_document(write(root / "x.bad", "x"), roots=[root])


# --- expanding paths ------------------------------------------------------------------------


@pytest.fixture
def tree(root: Path) -> Path:
    for name in ("b.md", "a.txt", "sub/c.py", "sub/deep/d.json", "sub/image.png", ".hidden.txt",
                 ".git/config.txt", "sub/.cache/e.txt"):  # fmt: skip
        write(root / name, json.dumps(name) if name.endswith(".json") else name)
    return root


def test_expand_paths_walks_folders_sorted_and_filtered(tree):
    found = expand_paths(roots=[tree])
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "a.txt",
        "b.md",
        "sub/c.py",
        "sub/deep/d.json",
    ]
    assert expand_paths([tree / "sub", tree / "sub" / "c.py"], roots=[tree]) == found[2:]


def test_expand_paths_globs_and_keeps_named_files(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert [p.name for p in expand_paths("**/*.py", roots=[tree])] == ["c.py"]
    assert [p.name for p in expand_paths(str(tree / "*"), roots=[tree])] == [
        "a.txt", "b.md", "c.py", "d.json"]  # fmt: skip
    # Named explicitly, a file is kept whatever its type, so that reading it explains why not.
    assert [p.name for p in expand_paths("sub/image.png", roots=[tree])] == ["image.png"]
    pngs = expand_paths("sub", roots=[tree], extensions=[".png"])
    assert [p.name for p in pngs] == ["image.png"]


def test_expand_paths_refuses_and_skips_what_escapes(tree, monkeypatch):
    outside = write(tree.parent / "outside" / "secret.txt", "secret")
    (tree / "link.txt").symlink_to(outside)
    (tree / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    names = [p.name for p in expand_paths(roots=[tree])]
    assert "secret.txt" not in names and "link.txt" not in names
    monkeypatch.chdir(tree)
    for pattern in ("../outside", "../../*", "../outside/*.txt", str(outside)):
        with pytest.raises(UserError, match="outside the allowed roots"):
            expand_paths(pattern, roots=[tree])
    with pytest.raises(UserError, match="no file or folder"):
        expand_paths("missing.txt", roots=[tree])


def test_read_documents_reads_every_expanded_file(tree):
    docs = read_documents(roots=[tree])
    assert [d.id for d in docs] == ["a.txt", "b.md", "sub/c.py", "sub/deep/d.json"]
    assert docs[0].text == "a.txt"
    assert json.loads(docs[-1].text) == "sub/deep/d.json"


# --- the splitter ---------------------------------------------------------------------------

_WORDS = ["the", "cat", "sat", "on", "a", "mat", "quarterly", "revenue", "grew", "Zoë", "🦎"]


def _text(seed: int, length: int = 3000) -> str:
    """Words, sentences, lines and paragraphs of random lengths, plus an unbroken run."""
    rng = random.Random(seed)
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        parts.append(rng.choice(_WORDS))
        parts.append(rng.choice([" "] * 12 + [". ", "\n", "\n\n", "  "]))
        if rng.random() < 0.01:
            parts.append("x" * rng.randint(50, 400) + " ")
    return "".join(parts)


def _token_count(text: str) -> int:
    return TokenMemory(model_name="gpt-4o-mini").count_text(text)


def _check_chunks(text: str, chunks: list[Document], size: int, measure) -> None:
    """Every chunk within ``size``, an exact slice at its offset, and nothing lost."""
    covered = [False] * len(text)
    for chunk in chunks:
        start = chunk.metadata["start_index"]
        assert 0 < measure(chunk.text) <= size
        assert text[start : start + len(chunk.text)] == chunk.text
        covered[start : start + len(chunk.text)] = [True] * len(chunk.text)
    assert all(covered[i] for i, char in enumerate(text) if not char.isspace())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("size", "overlap"), [(40, 0), (100, 20), (250, 60), (1000, 200)])
def test_character_chunks_never_exceed_the_limit_and_lose_nothing(seed, size, overlap):
    doc = Document("d", _text(seed))
    chunks = RecursiveSplitter(chunk_size=size, overlap=overlap).split(doc)
    assert len(chunks) > 1
    _check_chunks(doc.text, chunks, size, len)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(("size", "overlap"), [(8, 2), (30, 5), (120, 30)])
def test_token_chunks_never_exceed_the_limit_and_lose_nothing(seed, size, overlap):
    assert _encoding("gpt-4o-mini") is not None  # the real encoding, offline: not an estimate
    doc = Document("d", _text(seed, 1500))
    chunks = RecursiveSplitter(chunk_size=size, overlap=overlap, by="tokens").split(doc)
    _check_chunks(doc.text, chunks, size, _token_count)
    # Counted in tokens, not characters: most chunks are longer than `size` characters.
    assert max(len(c.text) for c in chunks) > size


def test_a_character_larger_than_the_token_limit_is_a_user_error():
    with pytest.raises(UserError, match="chunk_size=2 is smaller than the single character"):
        RecursiveSplitter(chunk_size=2, overlap=0, by="tokens").split_text("ab 🦎 cd")


@pytest.mark.parametrize(("size", "overlap", "by"), [(60, 20, "chars"), (20, 6, "tokens")])
def test_consecutive_chunks_overlap_by_at_most_overlap(size, overlap, by):
    doc = Document("d", " ".join(f"word{i}" for i in range(200)))
    measure = len if by == "chars" else _token_count
    chunks = RecursiveSplitter(chunk_size=size, overlap=overlap, by=by).split(doc)
    assert len(chunks) > 3
    for before, after in itertools.pairwise(chunks):
        end = before.metadata["start_index"] + len(before.text)
        shared = doc.text[after.metadata["start_index"] : end]
        assert shared.strip(), "no overlap between consecutive chunks"
        assert before.text.endswith(shared) and after.text.startswith(shared)
        assert measure(shared) <= overlap
        assert after.metadata["start_index"] > before.metadata["start_index"]


def test_no_overlap_when_overlap_is_zero():
    doc = Document("d", " ".join(f"word{i}" for i in range(200)))
    chunks = RecursiveSplitter(chunk_size=60, overlap=0).split(doc)
    for before, after in itertools.pairwise(chunks):
        assert after.metadata["start_index"] >= before.metadata["start_index"] + len(before.text)


def test_splits_on_the_coarsest_separator_that_fits():
    first, second = "A first paragraph. " * 3, "Then a second one. " * 3
    text = f"{first.strip()}\n\n{second.strip()}"
    chunks = RecursiveSplitter(chunk_size=len(text) - 1, overlap=0).split_text(text)
    assert chunks == [first.strip(), second.strip()]


def test_an_unbroken_run_is_cut_anywhere():
    text = "y" * 250
    chunks = RecursiveSplitter(chunk_size=100, overlap=0).split_text(text)
    assert chunks == ["y" * 100, "y" * 100, "y" * 50]
    no_fallback = RecursiveSplitter(chunk_size=100, overlap=0, separators=["\n"])
    assert no_fallback.split_text(text) == chunks


def test_chunks_carry_metadata_and_stable_ids():
    parent = Document("guide/a.md", _text(7, 800), {"source": "guide/a.md", "type": "md"})
    chunks = RecursiveSplitter(chunk_size=120, overlap=30).split(parent)
    assert [c.id for c in chunks] == [f"guide/a.md#{n}" for n in range(len(chunks))]
    for n, chunk in enumerate(chunks):
        assert chunk.metadata == {
            "source": "guide/a.md",
            "type": "md",
            "document_id": "guide/a.md",
            "chunk_index": n,
            "start_index": chunk.metadata["start_index"],
        }
    assert parent.metadata == {"source": "guide/a.md", "type": "md"}  # the parent is untouched


def test_splitting_is_deterministic_and_the_splitter_pickles():
    doc = Document("d", _text(3))
    splitter = RecursiveSplitter(chunk_size=150, overlap=40)
    first = splitter.split(doc)
    assert splitter.split(doc) == first
    assert pickle.loads(pickle.dumps(splitter)).split(doc) == first
    assert RecursiveSplitter(chunk_size=150, overlap=40).split(Document("d", doc.text)) == first


def test_short_text_is_one_chunk_and_blank_text_none():
    splitter = RecursiveSplitter(chunk_size=100, overlap=10)
    (only,) = splitter.split(Document("d", "  short text\n", {"k": 1}))
    assert (only.id, only.text, only.metadata["start_index"]) == ("d#0", "short text", 2)
    assert only.metadata["k"] == 1
    assert splitter.split(Document("d", "")) == []
    assert splitter.split(Document("d", " \n\n\t ")) == []


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -5, "overlap": 0}, "chunk_size"),
        ({"chunk_size": 10.5}, "chunk_size"),
        ({"chunk_size": True, "overlap": 0}, "chunk_size"),
        ({"chunk_size": 100, "overlap": -1}, "overlap"),
        ({"chunk_size": 100, "overlap": 100}, "smaller than chunk_size"),
        ({"chunk_size": 100, "overlap": 150}, "smaller than chunk_size"),
        ({"by": "words"}, "by must be"),
        ({"separators": "\n"}, "separators"),
        ({"separators": ["\n", 3]}, "separators"),
        ({"model_name": ""}, "model_name"),
    ],
)
def test_bad_splitter_arguments_are_user_errors(kwargs, named):
    with pytest.raises(UserError, match=named):
        RecursiveSplitter(**kwargs)


def test_split_takes_documents_and_split_text_strings():
    splitter = RecursiveSplitter(chunk_size=10, overlap=0)
    with pytest.raises(UserError, match="split_text"):
        splitter.split("a string")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="takes a str"):
        splitter.split_text(Document("d", "x"))  # type: ignore[arg-type]


def test_the_package_does_not_import_ray():
    # Ray tasks will run these; the package itself stays pure Python.
    package = Path(readers_module.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in getattr(node, "names", [])] + [getattr(node, "module", "")]
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert not any((n or "").split(".")[0] == "ray" for n in names), module.name
