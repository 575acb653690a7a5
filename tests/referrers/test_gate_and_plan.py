"""``require_signature`` (the promotion gate) and ``plan``'s referrer entries, against real
registries; the gate once more through the ``syncd`` command, for its exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from syncd.metrics import Metrics
from tests.helpers.images import image, multiarch, push
from tests.helpers.registry import Registry, manifest_raw, tags
from tests.referrers.conftest import (
    NOTARY_TYPE,
    SBOM_TYPE,
    SIGSTORE_TYPE,
    artifact,
    attach,
    cosign_signature,
    fallback_tag,
    make_config,
    sync,
)

REPO = "gate/app"
UA = "syncd/"


def seed_gate(src: Registry) -> dict[str, str]:
    """v1 notation-signed, v2 cosign-signed (legacy tag), v3 sigstore bundle, v4 an SBOM only."""
    digests = {}
    imgs = {t: image(f"gate-{t}") for t in ("v1", "v2", "v3", "v4")}
    for t, img in imgs.items():
        digests[t] = push(src.url, REPO, t, img)
    attach(src, REPO, artifact(imgs["v1"], NOTARY_TYPE, "notation"))
    cosign_signature(src, REPO, imgs["v2"], "v2")
    attach(src, REPO, artifact(imgs["v3"], SIGSTORE_TYPE, "bundle"))
    attach(src, REPO, artifact(imgs["v4"], SBOM_TYPE, "an sbom is not a signature"))
    return digests


async def test_gate_refuses_unsigned_and_passes_signed(source: Registry, target: Registry) -> None:
    digests = seed_gate(source)
    metrics = Metrics()
    result = await sync(make_config(source, [target], [REPO], require_signature=True), metrics)
    assert result.synced == 3 and result.failed == 1
    assert len(result.failures) == 1 and "v4" in result.failures[0]
    assert "no signature" in result.failures[0]
    failures = metrics.image_failures.labels(rule="r", target="t0", reason="unsigned")
    assert failures._value.get() == 1
    assert manifest_raw(target.url, REPO, "v4") is None
    assert manifest_raw(target.url, REPO, digests["v4"]) is None
    for t in ("v1", "v2", "v3"):
        assert manifest_raw(target.url, REPO, t) is not None
    # the signatures went along (the gate does not depend on `referrers`, the copy does)
    assert result.referrers_copied == 3

    # with referrers off the gate still reads the source's referrers, and copies none
    other = await sync(
        make_config(source, [target], ["gate/app"], require_signature=True, referrers=False)
    )
    assert other.failed == 1 and other.referrers_copied == 0


async def test_gate_with_an_index_signed_by_cosign(source: Registry, target: Registry) -> None:
    idx = multiarch("gate-idx")
    push(source.url, REPO, "multi", idx)
    result = await sync(make_config(source, [target], [REPO], require_signature=True))
    assert result.failed == 1 and result.synced == 0
    cosign_signature(source, REPO, idx, "idx")
    result = await sync(make_config(source, [target], [REPO], require_signature=True))
    assert result.ok and result.synced == 1 and result.referrers_copied == 1
    assert manifest_raw(target.url, REPO, "multi") == idx.raw


async def test_plan_lists_referrers_and_writes_nothing(source: Registry, target: Registry) -> None:
    img = image("plan-v1")
    push(source.url, REPO, "v1", img)
    sbom = artifact(img, SBOM_TYPE, "plan-sbom")
    attach(source, REPO, sbom)
    sig = cosign_signature(source, REPO, img, "plan")
    unsigned = image("plan-v2")
    push(source.url, REPO, "v2", unsigned)
    mark = target.log_mark()
    plan = await sync(make_config(source, [target], [REPO], require_signature=True), dry_run=True)
    writes = [a for a in target.accesses(mark, UA) if a.method in ("PUT", "POST", "PATCH")]
    assert writes == []
    by_action: dict[str, list[tuple[str, str, str]]] = {}
    for e in plan.plan:
        by_action.setdefault(e.action, []).append((e.tag, e.digest, e.referrer_type))
    assert sorted(by_action["referrer"]) == sorted(
        [
            ("v1", sbom.digest, SBOM_TYPE),
            ("v1", sig.digest, "application/vnd.dev.cosign.artifact.sig.v1+json"),
        ]
    )
    assert by_action["unsigned"] == [("v2", unsigned.digest, "")]
    assert [t for t, _, _ in by_action["copy"]] == ["v1"]
    # the referrer tags are not listed as tags of their own (not even as "filtered")
    assert "filtered" not in by_action

    await sync(make_config(source, [target], [REPO]))
    plan = await sync(make_config(source, [target], [REPO]), dry_run=True)
    assert [e.action for e in plan.plan] == ["up_to_date", "up_to_date"]


def test_once_exits_1_for_an_unsigned_image(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    digests = seed_gate(source)
    cfg = {
        "registries": {"dev": {"url": source.url}, "prod": {"url": target.url}},
        "rules": [
            {
                "name": "promote",
                "source": "dev",
                "targets": ["prod"],
                "repositories": [REPO],
                "require_signature": True,
                "referrers_types": [NOTARY_TYPE, "application/vnd.dev.cosign.artifact.sig.v1+json"],
            }
        ],
    }
    path = tmp_path / "syncd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(path), "once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert "synced=3" in summary and "failed=1" in summary and "referrers=2" in summary
    assert "v4" in proc.stderr and "no signature" in proc.stderr
    assert sorted(t for t in tags(target.url, REPO) if t.startswith("v")) == ["v1", "v2", "v3"]
    # v1's notation signature and v2's cosign tag arrived; v3's bundle was not wanted here
    at_target = tags(target.url, REPO)
    assert fallback_tag(digests["v2"]) + ".sig" in at_target
    assert fallback_tag(digests["v1"]) in at_target
    assert fallback_tag(digests["v3"]) not in at_target
