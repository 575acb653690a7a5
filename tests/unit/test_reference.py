"""Reference, digest and manifest parsing: pure, table-driven."""

from __future__ import annotations

import json
import logging

import pytest

from syncd.digest import digest_of
from syncd.errors import InvalidReferenceError, ManifestInvalidError
from syncd.logs import JSONFormatter, RedactingFilter
from syncd.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_manifest,
)
from syncd.reference import Reference, parse_reference
from syncd.secret import Secret

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", Reference("docker.io", "library/alpine")),
        ("alpine:3.19", Reference("docker.io", "library/alpine", "3.19")),
        ("team/app:v1", Reference("docker.io", "team/app", "v1")),
        ("localhost/app", Reference("localhost", "app")),
        ("localhost:5000/a/b/c:t", Reference("localhost:5000", "a/b/c", "t")),
        ("127.0.0.1:5001/team-a/app", Reference("127.0.0.1:5001", "team-a/app")),
        ("reg.example.com/app@" + D, Reference("reg.example.com", "app", None, D)),
        ("reg.example.com/app:v1@" + D, Reference("reg.example.com", "app", "v1", D)),
        ("[::1]:5000/app:x", Reference("[::1]:5000", "app", "x")),
        ("r.io/a.b/c_d/e__f/g-h--i:T_1.2-3", Reference("r.io", "a.b/c_d/e__f/g-h--i", "T_1.2-3")),
    ],
)
def test_parse_reference(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        " app",
        "App/x",
        "r.io/a//b",
        "r.io/a:",
        "r.io/a:-tag",
        "r.io/a@sha256:xyz",
        "r.io/a:" + "t" * 129,
        "r.io/-a",
        "r.io/a_",
        "a b",
    ],
)
def test_parse_reference_rejects(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as e:
        parse_reference(text)
    assert repr(text)[1:-1][:10] in str(e.value) or text == ""


def test_default_registry_means_no_host_guessing() -> None:
    ref = parse_reference("team.a/app:v1", default_registry="dev")
    assert ref == Reference("dev", "team.a/app", "v1")
    assert ref.identifier == "v1"
    assert ref.with_digest(D).identifier == D


def _doc(**kw: object) -> bytes:
    return json.dumps(kw).encode()


DESC = {"mediaType": "x", "digest": D, "size": 3}


@pytest.mark.parametrize(
    ("raw", "ctype", "media_type", "is_index"),
    [
        (
            _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=DESC, layers=[DESC]),
            "",
            OCI_MANIFEST,
            False,
        ),
        (
            _doc(schemaVersion=2, mediaType=DOCKER_MANIFEST, config=DESC, layers=[]),
            "",
            DOCKER_MANIFEST,
            False,
        ),
        (_doc(schemaVersion=2, mediaType=DOCKER_LIST, manifests=[DESC]), "", DOCKER_LIST, True),
        (_doc(schemaVersion=2, manifests=[DESC]), "", OCI_INDEX, True),
        (_doc(schemaVersion=2, config=DESC, layers=[DESC]), OCI_MANIFEST, OCI_MANIFEST, False),
    ],
)
def test_parse_manifest(raw: bytes, ctype: str, media_type: str, is_index: bool) -> None:
    m = parse_manifest(raw, ctype)
    assert m.media_type == media_type and m.is_index is is_index
    assert m.digest == digest_of(raw) and m.raw == raw


def test_manifest_blobs_skip_foreign_layers_and_keep_platforms() -> None:
    foreign = {
        **DESC,
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "urls": ["https://example.com/layer"],
    }
    m = parse_manifest(
        _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config=DESC, layers=[DESC, foreign])
    )
    assert len(m.blobs) == 2
    idx = parse_manifest(
        _doc(
            schemaVersion=2,
            mediaType=OCI_INDEX,
            manifests=[
                {**DESC, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}
            ],
        )
    )
    assert str(idx.children[0].platform) == "linux/arm/v7"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"schemaVersion": 1, "fsLayers": []}', "schema1"),
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (_doc(schemaVersion=2, mediaType="application/x-unknown"), "unsupported"),
        (_doc(schemaVersion=2, mediaType=OCI_INDEX), "no 'manifests'"),
        (
            _doc(schemaVersion=2, mediaType=OCI_MANIFEST, config={"digest": D}, layers=[]),
            "lacks digest or size",
        ),
        (b" " * (MAX_MANIFEST_BYTES + 1), "limit"),
    ],
)
def test_parse_manifest_refuses(raw: bytes, match: str) -> None:
    with pytest.raises(ManifestInvalidError, match=match):
        parse_manifest(raw)


def test_secret_never_prints() -> None:
    s = Secret("hunter2-very-secret")
    assert "hunter2" not in f"{s} {s!r} {[s]} {s:>30}"
    assert s.reveal() == "hunter2-very-secret"


def test_log_filter_masks_secrets_and_authorization() -> None:
    f = RedactingFilter(["p4ssw0rd-xyz"])
    rec = logging.LogRecord(
        "x",
        logging.INFO,
        "",
        0,
        "login with %s; Authorization: Bearer abc.def.ghi",
        ("p4ssw0rd-xyz",),
        None,
    )
    rec.detail = "password p4ssw0rd-xyz"
    assert f.filter(rec)
    out = JSONFormatter().format(rec)
    assert "p4ssw0rd" not in out and "abc.def.ghi" not in out
    assert "******" in out
    # secrets learned later (a reloaded config) are masked from then on
    f.add_all(["rotated-s3cret"])
    later = logging.LogRecord("x", logging.INFO, "", 0, "now rotated-s3cret", None, None)
    assert f.filter(later) and "rotated" not in later.getMessage()
