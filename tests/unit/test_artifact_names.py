"""What a tool may call its artifacts: whatever names a file, nothing that climbs out of its
step's place in the store or breaks the download's headers."""

from __future__ import annotations

import pytest

from nofx.errors import PermanentToolError, StorageError
from nofx.storage.filesystem import FileStorage
from nofx.tools import Artifact


@pytest.mark.parametrize("name", [
    "README.md", "src/main.py", 'résumé "final".md', "a..b.txt", "..hidden", "x" * 255,
])
def test_a_file_name_is_an_artifact_name(name):
    assert Artifact(name, b"x", "text/plain").name == name


@pytest.mark.parametrize("name", [
    "", "..", "../x", "a/../../x", "/etc/passwd", "a//b", "./x", "a/", "a\\b", "x\ny", "x\x00",
    "x" * 256,
])
def test_a_name_that_could_escape_or_forge_is_refused_as_the_tools_fault(name):
    with pytest.raises(PermanentToolError, match="artifact name"):
        Artifact(name, b"x", "text/plain")


@pytest.mark.parametrize("content_type", [
    "text/markdown", "text/plain; charset=utf-8", "application/vnd.api+json",
])
def test_a_mime_type_is_a_content_type(content_type):
    assert Artifact("a", b"x", content_type).content_type == content_type


@pytest.mark.parametrize("content_type", [
    "text/html\r\nSet-Cookie: x=1", "text/plain\n; x=1", "text/plain\r\n; charset=utf-8",
    "text/plain\u2028; x=1", "html", "", "text/ html", "text/plain; é",
])
def test_anything_else_is_refused_as_a_content_type(content_type):
    with pytest.raises(PermanentToolError, match="not a MIME type"):
        Artifact("a", b"x", content_type)


def test_the_file_store_refuses_a_key_that_climbs_even_if_it_lands_inside(tmp_path):
    store = FileStorage(tmp_path)
    with pytest.raises(StorageError, match="escapes the store"):
        store.put("runs/r/steps/s/1/sub/../../../../other/x", b"x", "text/plain")
    assert store.put("runs/r/steps/s/1/a..b", b"x", "text/plain").size == 1
