"""``oci:`` and ``oci-archive:`` urls in the config: what validation accepts and refuses,
each refusal naming the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncd.config.load import load_config
from syncd.errors import ConfigError, ConfigProblem
from tests.layout.conftest import run_syncd


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    return e.value.problems


def test_layout_paths_are_taken_from_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "in.tar").write_bytes(b"")
    cfg = load_config(
        write(
            tmp_path,
            """\
            registries:
              disk: {url: 'oci:media/oci'}
              saved: {url: 'oci-archive:in.tar'}
              hub: {url: 'http://127.0.0.1:5000'}
            rules:
              - {name: a, source: saved, targets: [disk], repositories: ['**']}
              - {name: b, source: disk, targets: [hub], repositories: ['**']}
            """,
        ),
        environ={},
    )
    assert cfg.registries["disk"].url == f"oci:{tmp_path}/media/oci"
    assert cfg.registries["disk"].layout == ("oci", f"{tmp_path}/media/oci")
    assert cfg.registries["saved"].layout == ("oci-archive", f"{tmp_path}/in.tar")
    assert cfg.registries["hub"].layout is None
    # A target directory is created when first written, not by validation.
    assert not (tmp_path / "media").exists()


def test_archive_as_target_and_credentials_on_layouts_are_refused(tmp_path: Path) -> None:
    (tmp_path / "in.tar").write_bytes(b"")
    (tmp_path / "file").write_text("x")
    path = write(
        tmp_path,
        """\
        registries:
          disk:
            url: oci:/srv/oci
            username: bot
            password: hunter2
          saved:
            url: oci-archive:in.tar
            tls_verify: false
            proxy: http://u:proxy-pw-9q@proxy.corp:3128
          gone: {url: 'oci-archive:missing.tar'}
          notdir: {url: 'oci:file'}
          empty: {url: 'oci:'}
        rules:
          - {name: a, source: disk, targets: [saved], repositories: ['**']}
          - {name: b, source: gone, targets: [notdir], repositories: ['**']}
        """,
    )
    found = {(p.key, p.message.split(":")[0]) for p in problems(path)}
    shown = "\n".join(str(p) for p in problems(path))
    assert "hunter2" not in shown and "proxy-pw-9q" not in shown
    keys = {k for k, _ in found}
    assert {
        "registries.disk.username",
        "registries.disk.password",
        "registries.saved.tls_verify",
        "registries.saved.proxy",
        "registries.gone.url",
        "registries.notdir.url",
        "registries.empty.url",
        "rules[0].targets[0]",
    } <= keys, shown
    assert "is an oci-archive, which syncd only reads" in shown
    assert "missing.tar' does not exist" in shown
    assert "exists and is not a directory" in shown
    assert "does not apply to an OCI image layout" in shown


def test_validate_command_exits_2_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "in.tar").write_bytes(b"")
    path = write(
        tmp_path,
        """\
        registries:
          saved: {url: 'oci-archive:in.tar'}
          other: {url: 'oci-archive:in.tar'}
        rules:
          - {name: a, source: saved, targets: [other], repositories: ['**']}
        """,
    )
    r = run_syncd("-c", str(path), "validate")
    assert r.returncode == 2
    assert "rules[0].targets[0]" in r.stdout + r.stderr
