"""Checks that span the config document: what one key alone cannot tell.

Registry names that rules refer to, duplicate rule names, a rule copying onto itself or
onto its own copies, keys that exclude each other, files that must exist. They run on the
plain data of ``config.yaml_positions`` (also when validation failed elsewhere, so that
``syncd validate`` reports everything at once) and report through ``add``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Protocol

from syncd.config.values import REGISTRY_NAME_RE, glob_problem, layout_url, resolve, show
from syncd.config.yaml_positions import Document, Path
from syncd.reference import DOCKER_HUB_API, is_docker_hub, split_origin
from syncd.rules import is_glob, repository_matches

# Keys of a registry that mean nothing for an OCI image layout.
NOT_FOR_LAYOUTS = (
    "username",
    "password",
    "password_file",
    "docker_config",
    "ca_file",
    "tls_verify",
    "client_cert",
    "client_key",
    "allow_insecure_auth",
    "proxy",
)


class Report(Protocol):
    def __call__(self, path: Path, message: str, *, at_key: bool = False) -> None: ...


class DocumentChecks:
    """One run of the cross-document checks over a parsed document."""

    def __init__(self, doc: Document, add: Report, base_dir: str, *, check_files: bool) -> None:
        self.doc = doc
        self.add = add
        self.base_dir = base_dir
        self.check_files = check_files

    def _resolve(self, file: str) -> str:
        return resolve(self.base_dir, file)

    def run(self) -> None:
        data: dict[str, Any] = self.doc.data
        registries = data.get("registries")
        names: list[str] = []
        if isinstance(registries, dict):
            names = list(registries)
            for name, reg in registries.items():
                self._check_registry(name, reg)
        defaults = data.get("defaults")
        if isinstance(defaults, dict):
            self._interval_and_schedule(("defaults",), defaults)
        cluster = data.get("cluster")
        if isinstance(cluster, dict) and isinstance(cluster.get("etcd"), dict):
            self._check_etcd(cluster["etcd"])
        rules = data.get("rules")
        if isinstance(rules, list):
            first_seen: dict[str, int] = {}
            for i, rule in enumerate(rules):
                if isinstance(rule, dict):
                    self._check_rule(i, rule, names, registries, first_seen)

    def _check_registry(self, name: str, reg: Any) -> None:
        path: Path = ("registries", name)
        if not REGISTRY_NAME_RE.match(name):
            self.add(
                path,
                f"invalid registry name {name!r}: lower-case letters, digits, '_' and '-', "
                "starting with a letter or digit",
                at_key=True,
            )
        if not isinstance(reg, dict):
            return
        if self._check_layout(path, reg):
            return
        self._check_login(path, reg)
        if "client_key" in reg and "client_cert" not in reg:
            self.add((*path, "client_key"), "client_key needs client_cert", at_key=True)
        for key in ("password_file", "ca_file", "client_cert", "client_key"):
            self._check_file(path, reg, key)
        self._check_accounts(path, reg)

    def _check_login(self, path: Path, section: dict[str, Any]) -> None:
        """One password source, and a username beside it (a registry's or etcd's)."""
        if "password" in section and "password_file" in section:
            self.add(
                (*path, "password_file"),
                "set either password or password_file, not both",
                at_key=True,
            )
        if ("password" in section or "password_file" in section) and "username" not in section:
            which = "password" if "password" in section else "password_file"
            self.add((*path, which), "a password needs a username", at_key=True)

    def _check_etcd(self, etcd: dict[str, Any]) -> None:
        path: Path = ("cluster", "etcd")
        self._check_login(path, etcd)
        if "username" in etcd and not ("password" in etcd or "password_file" in etcd):
            self.add((*path, "username"), "username needs password or password_file", at_key=True)
        if "client_key" in etcd and "client_cert" not in etcd:
            self.add((*path, "client_key"), "client_key needs client_cert", at_key=True)
        if "client_cert" in etcd and "client_key" not in etcd:
            self.add((*path, "client_cert"), "client_cert needs client_key", at_key=True)
        endpoints = etcd.get("endpoints")
        listed = [endpoints] if isinstance(endpoints, str) else endpoints
        if isinstance(listed, list):
            schemes = {e.partition("://")[0] for e in listed if isinstance(e, str) and "://" in e}
            if len(schemes) > 1:
                self.add(
                    (*path, "endpoints"), "mix of http:// and https:// endpoints: use one scheme"
                )
            tls_keys = [k for k in ("ca_file", "client_cert") if k in etcd]
            if schemes == {"http"} and tls_keys:
                self.add(
                    (*path, tls_keys[0]),
                    f"{tls_keys[0]} needs https:// endpoints",
                    at_key=True,
                )
        for key in ("password_file", "ca_file", "client_cert", "client_key"):
            self._check_file(path, etcd, key)

    def _check_accounts(self, path: Path, reg: dict[str, Any]) -> None:
        """``credentials``: instead of the single-account keys; each entry one secret."""
        accounts = reg.get("credentials")
        if not isinstance(accounts, list):
            return
        if not accounts:
            self.add((*path, "credentials"), "must not be empty")
        for key in ("username", "password", "password_file", "docker_config"):
            if key in reg:
                self.add(
                    (*path, key),
                    f"set either credentials (several accounts) or {key}, not both",
                    at_key=True,
                )
        for i, entry in enumerate(accounts):
            if not isinstance(entry, dict):
                continue
            where = (*path, "credentials", i)
            if "password" in entry and "password_file" in entry:
                self.add(
                    (*where, "password_file"),
                    "set either password or password_file, not both",
                    at_key=True,
                )
            elif "password" not in entry and "password_file" not in entry:
                self.add(where, "an account needs a password or a password_file")
            self._check_file(where, entry, "password_file")

    def _check_file(self, path: Path, section: dict[str, Any], key: str) -> None:
        value = section.get(key)
        if not self.check_files or not isinstance(value, str) or not value:
            return
        if (*path, key) in self.doc.broken:
            return
        full = self._resolve(value)
        if not os.path.isfile(full):
            self.add((*path, key), f"{key} {show(value)} does not exist or is not a file")
        elif not os.access(full, os.R_OK):
            self.add((*path, key), f"{key} {show(value)} is not readable")

    def _check_layout(self, path: Path, reg: dict[str, Any]) -> bool:
        """A layout url: no credential or TLS keys; an archive must exist. True if a layout."""
        url = reg.get("url")
        layout = layout_url(url) if isinstance(url, str) else None
        if layout is None:
            return False
        kind, where = layout
        for key in NOT_FOR_LAYOUTS:
            if key in reg:
                self.add(
                    (*path, key),
                    f"{key} does not apply to an OCI image layout ({kind}:): a layout is read "
                    "from and written to the file system, with no credentials or TLS",
                    at_key=True,
                )
        if not self.check_files or not where.strip() or (*path, "url") in self.doc.broken:
            return True
        full = self._resolve(where)
        if kind == "oci-archive":
            if not os.path.isfile(full):
                self.add(
                    (*path, "url"), f"oci-archive {show(where)} does not exist or is not a file"
                )
            elif not os.access(full, os.R_OK):
                self.add((*path, "url"), f"oci-archive {show(where)} is not readable")
        elif os.path.exists(full) and not os.path.isdir(full):
            self.add((*path, "url"), f"oci: {show(where)} exists and is not a directory")
        return True

    def _interval_and_schedule(self, path: Path, section: dict[str, Any]) -> None:
        if "interval" in section and "schedule" in section:
            self.add(
                (*path, "schedule"),
                "set either interval or schedule, not both",
                at_key=True,
            )

    def _check_rule(
        self,
        i: int,
        rule: dict[str, Any],
        names: list[str],
        registries: Any,
        first_seen: dict[str, int],
    ) -> None:
        path: Path = ("rules", i)
        self._interval_and_schedule(path, rule)
        name = rule.get("name")
        if isinstance(name, str):
            if name in first_seen:
                line = self.doc.positions[("rules", first_seen[name], "name")].value[0]
                self.add((*path, "name"), f"duplicate rule name {name!r} (first at line {line})")
            else:
                first_seen[name] = i
        source = rule.get("source")
        if isinstance(source, str) and source and isinstance(registries, dict):
            self._known_registry((*path, "source"), source, names)
            self._no_catalog(path, rule, registries.get(source), source)
        targets = rule.get("targets")
        target_paths: list[tuple[Path, str]] = []
        if isinstance(targets, str):
            target_paths = [((*path, "targets"), targets)]
        elif isinstance(targets, list):
            target_paths = [((*path, "targets", j), t) for j, t in enumerate(targets)]
        prefix = rule.get("target_prefix", "")
        prefix = prefix if isinstance(prefix, str) else ""
        for tpath, target in target_paths:
            if not isinstance(target, str) or not target:
                continue
            if isinstance(registries, dict):
                self._known_registry(tpath, target, names)
                self._writable_target(tpath, target, registries)
            if not isinstance(source, str) or not self._same_registry(registries, source, target):
                continue
            if not prefix.strip("/"):
                same = (
                    "is the rule's source" if target == source else "has the same url as the source"
                )
                self.add(
                    tpath,
                    f"target {target!r} {same} and target_prefix is empty: every repository "
                    "would be copied onto itself",
                )
            else:
                self._copies_of_copies(path, rule, target, prefix)

    def _writable_target(self, path: Path, target: str, registries: dict[str, Any]) -> None:
        reg = registries.get(target)
        url = reg.get("url") if isinstance(reg, dict) else None
        layout = layout_url(url) if isinstance(url, str) else None
        if layout is not None and layout[0] == "oci-archive":
            self.add(
                path,
                f"registry {target!r} is an oci-archive, which syncd only reads: it can be a "
                "source, not a target (write to an oci: directory instead)",
            )

    def _no_catalog(self, path: Path, rule: dict[str, Any], reg: Any, source: str) -> None:
        """A glob needs the source's catalog. Docker Hub has none (known without asking);
        other registries without one are found out by ``plan``/``once``."""
        url = reg.get("url") if isinstance(reg, dict) else None
        if not isinstance(url, str) or not is_docker_hub(split_origin(url)[1]):
            return
        repos = rule.get("repositories")
        patterns = [repos] if isinstance(repos, str) else repos if isinstance(repos, list) else []
        for j, pattern in enumerate(patterns):
            if isinstance(pattern, str) and is_glob(pattern):
                where = (
                    (*path, "repositories", j)
                    if isinstance(repos, list)
                    else (*path, "repositories")
                )
                self.add(
                    where,
                    f"registry {source!r} is Docker Hub, which does not list its repositories "
                    f"(no catalog): {show(pattern)} cannot be expanded; list the "
                    "repositories by name",
                )

    def _known_registry(self, path: Path, name: str, names: list[str]) -> None:
        if name in names:
            return
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        defined = f"; defined: {', '.join(names)}" if names and not close else ""
        self.add(path, f"registry {name!r} is not defined under registries{hint}{defined}")

    def _same_registry(self, registries: Any, a: str, b: str) -> bool:
        if a == b:
            return True
        if not isinstance(registries, dict):
            return False
        urls = []
        for name in (a, b):
            reg = registries.get(name)
            url = reg.get("url") if isinstance(reg, dict) else None
            if not isinstance(url, str):
                return False
            scheme, host = split_origin(url)
            urls.append(f"{scheme}://{DOCKER_HUB_API if is_docker_hub(host) else host}")
        return urls[0] == urls[1]

    def _copies_of_copies(self, path: Path, rule: dict[str, Any], target: str, prefix: str) -> None:
        """Same registry with a prefix: a glob that also matches the copies would copy them
        again on every pass (``**`` with ``mirror/`` grows mirror/mirror/…)."""
        repos = rule.get("repositories")
        patterns = [repos] if isinstance(repos, str) else repos if isinstance(repos, list) else []
        patterns = [p for p in patterns if isinstance(p, str)]
        for j, pattern in enumerate(patterns):
            if not is_glob(pattern) or glob_problem(pattern):
                continue
            concrete = "/".join("x" if c == "**" else c for c in pattern.split("/"))
            concrete = concrete.replace("*", "x").replace("?", "x")
            copy = f"{prefix.strip('/')}/{concrete}"  # as rules.target_repository places it
            if any(repository_matches(p, copy) for p in patterns):
                where = (
                    (*path, "repositories", j)
                    if isinstance(repos, list)
                    else (*path, "repositories")
                )
                self.add(
                    where,
                    f"at target {target!r} (the source registry) the copies under "
                    f"{show(prefix)} match this pattern too, so every pass would copy the "
                    "copies again",
                )
