"""``once --report FILE``: the JSON run report, per rule and target, against real registries."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.test_cli import run, write_config
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def test_report_counts_per_target_and_lists_each_failure(
    source: Registry, registries: RegistryFactory, tmp_path: Path
) -> None:
    imgs = {f"v{i}": image(f"rep-{i}", layers=2) for i in range(3)}
    digests = {tag: push(source.url, "team/app", tag, img) for tag, img in imgs.items()}
    t0, t1 = registries(), registries()
    # t1 already has v0 pointing elsewhere: with overwrite false it is refused there only.
    other = push(t1.url, "team/app", "v0", image("rep-other", layers=1))
    cfg = write_config(
        tmp_path / "c.yaml", source, [t0, t1], repositories=["team/app"], overwrite=False
    )
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()

    r = run("-c", str(cfg), "once", "--report", str(report))
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(report.read_text())
    assert doc["version"] == 1
    (rule,) = doc["rules"]
    assert rule["name"] == "app"
    assert ISO_Z.match(rule["started"]) and ISO_Z.match(rule["finished"]), rule
    assert rule["started"] <= rule["finished"]
    by_target = {t["target"]: t for t in rule["targets"]}
    uploaded = sum(len(b.data) for img in imgs.values() for b in img.blobs)
    assert by_target["t0"] == {
        "target": "t0",
        "copied": 3,
        "up_to_date": 0,
        "failed": 0,
        "deleted": 0,
        "bytes": uploaded,
    }
    assert by_target["t1"]["copied"] == 2 and by_target["t1"]["failed"] == 1
    assert rule["failures"] == [
        {
            "source": "src/team/app:v0",
            "target": "t1/team/app:v0",
            "digest": digests["v0"],
            "reason": "overwrite_refused",
            "message": rule["failures"][0]["message"],
        }
    ]
    assert other in rule["failures"][0]["message"]
    # Written atomically: no temporary file is left beside it.
    assert [p.name for p in report.parent.iterdir()] == ["report.json"]

    # A second pass: everything up to date at t0, still refused at t1; the file is replaced.
    r = run("-c", str(cfg), "once", "--report", str(report))
    assert r.returncode == 1
    rule = json.loads(report.read_text())["rules"][0]
    by_target = {t["target"]: t for t in rule["targets"]}
    assert (by_target["t0"]["copied"], by_target["t0"]["up_to_date"]) == (0, 3)
    assert by_target["t0"]["bytes"] == 0
    assert (by_target["t1"]["up_to_date"], by_target["t1"]["failed"]) == (2, 1)


def test_report_of_a_clean_pass_and_a_source_side_failure(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    push(source.url, "team/app", "v1", image("rep-clean", layers=1))
    cfg = write_config(
        tmp_path / "c.yaml", source, [target], repositories=["team/app"], tags=["v1", "v9"]
    )
    report = tmp_path / "report.json"
    r = run("-c", str(cfg), "once", "--report", str(report))
    # v9 is named but missing at the source: the image failed at every target.
    assert r.returncode == 1, r.stdout + r.stderr
    rule = json.loads(report.read_text())["rules"][0]
    assert rule["targets"][0]["copied"] == 1 and rule["targets"][0]["failed"] == 1
    (failure,) = rule["failures"]
    assert failure["source"] == "src/team/app:v9" and failure["target"] == "t0/team/app:v9"
    assert failure["reason"] == "not_found"

    cfg = write_config(tmp_path / "c.yaml", source, [target], repositories=["team/app"])
    r = run("-c", str(cfg), "once", "--report", str(report))
    assert r.returncode == 0, r.stdout + r.stderr
    rule = json.loads(report.read_text())["rules"][0]
    assert rule["failures"] == []
    assert rule["targets"] == [
        {"target": "t0", "copied": 0, "up_to_date": 1, "failed": 0, "deleted": 0, "bytes": 0}
    ]


def test_report_to_an_unwritable_place_is_an_error(
    source: Registry, target: Registry, tmp_path: Path
) -> None:
    push(source.url, "team/app", "v1", image("rep-nowhere", layers=1))
    cfg = write_config(tmp_path / "c.yaml", source, [target], repositories=["team/app"])
    r = run("-c", str(cfg), "once", "--report", str(tmp_path / "no" / "such" / "r.json"))
    assert r.returncode == 1
    assert "cannot write the report" in r.stderr
