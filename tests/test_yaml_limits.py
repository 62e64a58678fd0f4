"""The one YAML loader: hostile files (alias bombs, deep nesting, wrong encodings, FIFOs, devices) are one line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune import _yaml
from mla_tune.cli import app
from mla_tune.errors import DataFileError

HEAD = "schema_version: 1\n"


def alias_bomb() -> str:
    """Nine levels of nine aliases each: 4.8 KB that a plain safe_load expands to 9**9 strings."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return HEAD + "\n".join(lines) + "\n" + "# padding to the size of the reported file\n" * 90


CASES = {
    "bomb.yaml": (alias_bomb, "line 3: not valid YAML: YAML aliases (*name) are not accepted"),
    # 20000 levels: PyYAML 6.0.4's libyaml refuses at 1000 while scanning ahead, 6.0.3 lets the composer refuse
    "deep.yaml": (lambda: HEAD + "x: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than 32 levels"),
    "deep40.yaml": (lambda: HEAD + "x: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32 levels"),
    "deepmap.yaml": (lambda: HEAD + "x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested deeper than 32 levels"),
    "block.yaml": (lambda: HEAD + "x:\n" + "".join(" " * i + "- \n" for i in range(1, 60)), "nested deeper"),
    "dup.yaml": (lambda: HEAD + "backend: A\nbackend: B\n", "line 3: not valid YAML: duplicate key 'backend'"),
    "int.yaml": (lambda: HEAD + "x: " + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit"),
    "date.yaml": (lambda: HEAD + "date: 2026-13-45\n", "not valid YAML: month must be in 1..12"),
    "tag.yaml": (lambda: HEAD + "x: !!python/object/apply:os.system [ls]\n", "could not determine a constructor"),
    "list.yaml": (lambda: "- 1\n", "expected a mapping at the top level"),
    "version.yaml": (lambda: "schema_version: true\n", "schema_version: is True"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_yaml_text_is_one_line_naming_the_file(tmp_path, name):
    make, words = CASES[name]
    path = tmp_path / name
    path.write_text(make())
    start = time.monotonic()
    with pytest.raises(DataFileError) as e:
        _yaml.load(path)
    assert time.monotonic() - start < 0.5  # refused while reading, not after expanding
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value) and "\n" not in str(e.value)


def test_pyyaml_refusing_deep_nesting_in_its_own_words_is_our_one_message(tmp_path, monkeypatch):
    """Whatever PyYAML version refuses first, and in whatever words, the user reads mla-tune's limit."""
    from yaml.error import Mark
    from yaml.scanner import ScannerError

    mark = Mark("<unicode string>", 0, 1, 1002, None, None)

    def refuse(self):
        raise ScannerError("while increasing flow level", mark, "exceeded maximum nesting depth", mark)

    monkeypatch.setattr(_yaml._StrictLoader, "get_single_data", refuse)
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + "x: [[1]]\n")
    with pytest.raises(DataFileError) as e:
        _yaml.load(path)
    assert str(e.value) == f"{path}: line 2: not valid YAML: nested deeper than 32 levels"


@pytest.mark.parametrize("text, words", [
    ("x: [1\n", "expected ',' or ']'"),  # a scanner/parser error about something else keeps its words
    ("depth: 1\ndepth: 2\n", "duplicate key 'depth'"),  # a key named depth is not a nesting refusal
])
def test_other_pyyaml_errors_keep_their_words(tmp_path, text, words):
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + text)
    with pytest.raises(DataFileError) as e:
        _yaml.load(path)
    assert words in str(e.value) and "nested deeper" not in str(e.value)


def test_a_recursion_error_is_the_nesting_message(tmp_path, monkeypatch):
    def recurse(self):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(_yaml._StrictLoader, "get_single_data", recurse)
    path = tmp_path / "t.yaml"
    path.write_text(HEAD)
    with pytest.raises(DataFileError, match="not valid YAML: nested deeper than 32 levels$"):
        _yaml.load(path)


def test_the_alias_bomb_is_the_size_of_the_reported_one(tmp_path):
    assert 4000 < len(alias_bomb()) < 5000


@pytest.mark.parametrize("data, words", [
    ((HEAD + "x: 1\n").encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    ((HEAD + "x: 1\n").encode("utf-16-le"), "a NUL byte at offset 1: a binary or UTF-16 file"),
    ((HEAD + "x: 1\n").encode("utf-32"), "is UTF-32 text"),
    (bytes(range(256)), "a NUL byte at offset 0"),
    ((HEAD + "name: caf\xe9\n").encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 27)"),
])
def test_binary_and_non_utf8_files_are_one_line(tmp_path, data, words):
    path = tmp_path / "t.yaml"
    path.write_bytes(data)
    with pytest.raises(DataFileError, match=r"t\.yaml: ") as e:
        _yaml.load(path)
    assert words in str(e.value)


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + HEAD.encode() + b"name: caf\xc3\xa9\n")
    assert _yaml.load(path)["name"] == "caf\u00e9"


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    monkeypatch.setattr(_yaml, "MAX_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "#" * 2000)
    with pytest.raises(DataFileError, match="big.yaml: over the size limit of 1,000 bytes"):
        _yaml.load(path)


def test_a_directory_a_fifo_and_a_device_are_refused_before_reading(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    for path, words in ((tmp_path, "is a directory"), (fifo, "is a FIFO"), (Path("/dev/zero"), "is a device"),
                        (tmp_path / "none.yaml", "cannot read: No such file")):
        with pytest.raises(DataFileError) as e:
            _yaml.load(path)
        assert str(e.value).startswith(f"{path}: ") and words in str(e.value)


def test_read_bytes_stops_at_the_limit_on_an_endless_file():
    with pytest.raises(DataFileError, match="is a device"):
        _yaml.read_bytes(Path("/dev/zero"), 10)


@pytest.mark.parametrize("value, words", [
    (float("nan"), "expected a finite number > 0"), (float("inf"), "finite"), (0, "> 0"), (-1.5, "> 0"),
    ("1", "expected a number"), (True, "expected a number"),
])
def test_number_refuses_nan_inf_and_wrong_types(value, words):
    with pytest.raises(DataFileError, match="f.yaml: k: ") as e:
        _yaml.number(Path("f.yaml"), "k", value)
    assert words in str(e.value)


def test_show_of_a_hostile_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    os.mkfifo(tmp_path / "fifo.yaml")
    for name in ("bomb.yaml", "fifo.yaml"):
        r = CliRunner().invoke(app, ["show", str(tmp_path / name)])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and name in lines[0], r.output
