"""Readers: JSONL, CSV, Parquet, stdin, Python objects; errors name file, line and field."""

import io
import sys

import pytest

from loglik.data import Fields, detect_format, read_examples, to_examples
from loglik.errors import InputError


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_jsonl_with_ids_and_blank_lines(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"prompt": "a", "response": "b", "id": 1}\n\n'
                 b'{"prompt": "c", "response": "", "x": 2}\n')
    exs = list(read_examples(path))
    assert [(e.prompt, e.response, e.id, e.line) for e in exs] == [("a", "b", 1, 1),
                                                                   ("c", "", None, 3)]


def test_renamed_fields(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"q": "a", "answer": "b", "key": "k"}\n')
    (ex,) = read_examples(path, Fields(prompt="q", response="answer", id="key"))
    assert (ex.prompt, ex.response, ex.id) == ("a", "b", "k")


@pytest.mark.parametrize("content,pattern", [
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "a", "respon', r"a.jsonl line 2: malformed JSON"),
    (b'{"prompt": "a", "answer": "b"}\n',
     r'a.jsonl line 1: missing field "response" \(fields present: prompt, answer\); '
     r"pass --response-field answer"),
    (b'{"prompt": "a", "response": 42}\n', r'line 1: field "response" must be a string, got int'),
    (b'{"prompt": null, "response": "b"}\n', r'line 1: field "prompt" must be a string, got null'),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n',
     r"a.jsonl line 2: not valid UTF-8 \(byte 0xff at column 13\)"),
    (b'["prompt", "response"]\n', r"line 1: expected a JSON object, got list"),
])
def test_jsonl_errors_name_file_line_field(tmp_path, content, pattern):
    path = write(tmp_path, "a.jsonl", content)
    with pytest.raises(InputError, match=pattern):
        list(read_examples(path))


def test_error_carries_structured_location(tmp_path):
    path = write(tmp_path, "a.jsonl", b'{"prompt": "a"}\n')
    with pytest.raises(InputError) as info:
        list(read_examples(path))
    assert (info.value.source, info.value.line, info.value.field) == (path, 1, "response")


def test_csv(tmp_path):
    path = write(tmp_path, "a.csv", 'id,prompt,response\n1,"Hi, there", " yes"\n2,x,\n'
                 .encode())
    exs = list(read_examples(path))
    assert [(e.id, e.prompt, e.response, e.line) for e in exs] == [
        ("1", "Hi, there", ' " yes"', 2), ("2", "x", "", 3)]


def test_csv_missing_column(tmp_path):
    path = write(tmp_path, "a.csv", b"prompt,answer\na,b\n")
    with pytest.raises(InputError, match=r'a.csv line 2: missing field "response"'):
        list(read_examples(path))


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "a.parquet")
    pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["x", None]}), path)
    gen = read_examples(path)
    assert next(gen).response == "x"
    with pytest.raises(InputError, match=r"a.parquet line 2: field \"response\" must be a "
                       "string, got null"):
        next(gen)


def test_stdin(monkeypatch):
    data = b'{"prompt": "a", "response": "b"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    (ex,) = read_examples("-")
    assert (ex.prompt, ex.source) == ("a", "<stdin>")


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(read_examples(str(tmp_path / "nope.jsonl")))
    with pytest.raises(InputError, match="--format"):
        detect_format("data.txt")


def test_python_objects():
    exs = list(to_examples([("a", "b"), {"prompt": "c", "response": "d", "id": 3}]))
    assert [(e.prompt, e.response, e.id) for e in exs] == [("a", "b", None), ("c", "d", 3)]
    with pytest.raises(InputError, match="record 1|<python> line 1"):
        list(to_examples([42]))


@pytest.mark.parametrize("line,column", [
    (b'{"prompt": "a", "response": "b" "id": 3}\n', 33),     # a missing comma
    (b'{"prompt": "a", "response": \n', 29),                # cut short at the line's end
    (b'{"prompt": "a", "response": "b"}}\r\n', 33),          # extra data
])
def test_malformed_json_names_the_parsers_column(tmp_path, line, column):
    path = write(tmp_path, "a.jsonl", b'{"prompt": "x", "response": "y"}\n' + line)
    with pytest.raises(InputError, match=rf"a.jsonl line 2: malformed JSON: .* at column "
                                         rf"{column};"):
        list(read_examples(path))


@pytest.mark.parametrize("content,line,pattern", [
    # the quote opened on line 3 never closes: row 3 must not vanish into row 2's response
    (b'id,prompt,response\n1,a,b\n2,plain,"unterminated\n3,x,y\n', 3,
     "closing quote never comes"),
    (b'id,prompt,response\n1,a,b\n2,a,b,extra\n', 3, "4 cells but the header has 3 columns"),
    (b'id,prompt,response\n1,a,b\n2,a\n', 3, "2 cells but the header has 3 columns"),
    (b'id,prompt,prompt,response\n1,a,b,c\n', 1, 'header names column "prompt" twice'),
    (b'id,,response\n1,a,b\n', 1, "header column 2 has no name"),
    (b'id,prompt,response\n1,"a"b,c\n', 2, "malformed CSV"),
])
def test_csv_errors_name_the_line(tmp_path, content, line, pattern):
    path = write(tmp_path, "a.csv", content)
    with pytest.raises(InputError, match=pattern) as info:
        list(read_examples(path))
    assert (info.value.source, info.value.line) == (path, line)


def test_csv_quoted_newlines_keep_the_starting_line(tmp_path):
    path = write(tmp_path, "a.csv", b'prompt,response\n\n"two\nlines",b\nc,d\n')
    assert [(e.prompt, e.line) for e in read_examples(path)] == [("two\nlines", 3), ("c", 5)]


def test_every_reader_takes_files_folders_and_globs(tmp_path):
    from loglik.choices import read_choice_rows
    from loglik.data import read_documents

    (tmp_path / "docs").mkdir()
    write(tmp_path / "docs", "a.txt", b"first doc\nstill first\n\nsecond doc\n")
    write(tmp_path / "docs", "b.jsonl", b'{"text": "third", "id": 7}\n')
    docs = list(read_documents(str(tmp_path / "docs")))
    assert [(d.response, d.id, d.line) for d in docs] == [
        ("first doc\nstill first", None, 1), ("second doc", None, 4), ("third", 7, 1)]
    assert [d.response for d in read_documents(str(tmp_path / "docs" / "*.txt"))] == [
        "first doc\nstill first", "second doc"]

    (tmp_path / "mc").mkdir()
    for n in (1, 2):
        write(tmp_path / "mc", f"{n}.jsonl",
              f'{{"context": "c{n}", "choices": ["a", "b"], "gold": 0}}\n'.encode())
    rows = list(read_choice_rows(str(tmp_path / "mc")))
    assert [(r.context, r.source.endswith(f"{n}.jsonl")) for n, r in zip((1, 2), rows)] == [
        ("c1", True), ("c2", True)]
    assert len(list(read_choice_rows(str(tmp_path / "mc" / "*.jsonl")))) == 2
