"""Every syncd config shipped in the repository validates.

Searched: ``*.yaml``/``*.yml`` under config/, docs/ and deploy/ (a whole file that is a syncd
config, or a Kubernetes ConfigMap that embeds one in ``data``), and the fenced ``yaml`` blocks
of docs/*.md and README.md that are whole configs (they have ``registries`` and ``rules``).
YAML that is no syncd config (Prometheus rules, Kubernetes manifests, dashboards) is skipped.

``${VAR}`` gets a stand-in value; a ``${…_DIR}`` variable gets a temporary directory holding
the files the config names under it, so that the files of config/ and docs/ are checked with
the files they name. Configs under deploy/ name paths inside a container, and snippets in
Markdown name illustrative paths, so their files are not looked for.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from syncd.config.load import load_config_text

REPO = pathlib.Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```ya?ml[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_VAR = re.compile(r"(?<!\$)\$\{(\w+)\}")
_DIR_FILE = re.compile(r"(?<!\$)\$\{(\w+_DIR)\}/([\w.-]+)")


def _is_syncd(doc: Any) -> bool:
    return isinstance(doc, dict) and "registries" in doc and "rules" in doc


def _documents(text: str) -> list[Any]:
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        # A file that does not even parse is reported by the loader, with its position, if it
        # looks like it wants to be a syncd config.
        return [{"registries": None, "rules": None}] if "rules:" in text else []


def shipped_configs() -> Iterator[tuple[str, str, bool]]:
    """(name, config text, whether its files exist on this machine)."""
    for top in ("config", "docs", "deploy"):
        base = REPO / top
        if not base.is_dir():
            continue
        local = top != "deploy"
        for path in sorted(base.rglob("*")):
            rel = str(path.relative_to(REPO))
            if path.suffix in (".yaml", ".yml"):
                text = path.read_text()
                docs = _documents(text)
                if any(_is_syncd(d) for d in docs):
                    yield rel, text, local
                for doc in docs:
                    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                        for key, value in (doc.get("data") or {}).items():
                            if isinstance(value, str) and _is_syncd(_first(value)):
                                yield f"{rel}#{key}", value, False
            elif path.suffix == ".md":
                yield from _fenced(rel, path.read_text())
    readme = REPO / "README.md"
    if readme.is_file():
        yield from _fenced("README.md", readme.read_text())


def _first(text: str) -> Any:
    docs = _documents(text)
    return docs[0] if docs else None


def _fenced(rel: str, text: str) -> Iterator[tuple[str, str, bool]]:
    for i, m in enumerate(_FENCE.finditer(text)):
        if _is_syncd(_first(m.group(1))):
            yield f"{rel}#yaml-{i + 1}", m.group(1), False


CONFIGS = list(shipped_configs())


def test_the_known_configs_are_found() -> None:
    names = {name for name, _, _ in CONFIGS}
    assert "config/example.yaml" in names
    if (REPO / "deploy/kubernetes/configmap.yaml").exists():
        assert "deploy/kubernetes/configmap.yaml#config.yaml" in names


@pytest.mark.parametrize(("name", "text", "local"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_shipped_config_validates(
    name: str, text: str, local: bool, tmp_path: pathlib.Path
) -> None:
    env = {var: f"stand-in-{var.lower()}" for var in _VAR.findall(text)}
    for var, file in _DIR_FILE.findall(text):
        env[var] = str(tmp_path)
        (tmp_path / file).write_text("stand-in\n")
    load_config_text(text, filename=name, environ=env, check_files=local)
