"""The demo behind ./scripts/demo: registries, a sample image, `syncd run`, metrics."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from tests.helpers.images import image, layer, multiarch, push
from tests.helpers.registry import RegistryFactory, free_port, manifest_raw, tags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="verify, then stop everything")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="syncd-demo-"))
    registries = RegistryFactory(work)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        dev, prod = registries(), registries()
        print(f"source registry (dev):  {dev.url}")
        print(f"target registry (prod): {prod.url}")
        base = [layer("demo-base", 512 * 1024)]
        push(dev.url, "team-a/app", "v1.0.0", image("demo-app-1", layers=2, shared=base))
        push(dev.url, "team-a/app", "v1.1.0", multiarch("demo-app-2", shared=base))
        push(dev.url, "team-a/app", "v1.2.0-rc1", image("demo-app-rc", layers=1, shared=base))
        push(dev.url, "team-a/worker", "v1.0.0", image("demo-worker", layers=3, shared=base))
        print("seeded team-a/app (v1.0.0, v1.1.0 multi-arch, v1.2.0-rc1) and team-a/worker")
        port = free_port()
        config = work / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "registries": {"dev": {"url": dev.url}, "prod": {"url": prod.url}},
                    "defaults": {"interval": "30s"},
                    "rules": [
                        {
                            "name": "team-a-releases",
                            "source": "dev",
                            "targets": ["prod"],
                            "repositories": ["team-a/*"],
                            "tags": {"include": [r"^v\d+\.\d+\.\d+$"]},
                        }
                    ],
                },
                sort_keys=False,
            )
        )
        print(f"config: {config}\n")
        subprocess.run([sys.executable, "-m", "syncd", "-c", str(config), "plan"], check=True)
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "syncd",
                "-c",
                str(config),
                "run",
                "--listen",
                f"127.0.0.1:{port}",
            ],
        )
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if tags(prod.url, "team-a/app") == ["v1.0.0", "v1.1.0"] and tags(
                prod.url, "team-a/worker"
            ) == ["v1.0.0"]:
                break
            time.sleep(0.5)
        else:
            print("demo: the target did not receive the images in 60 s", file=sys.stderr)
            return 1
        for repo, tag in (
            ("team-a/app", "v1.0.0"),
            ("team-a/app", "v1.1.0"),
            ("team-a/worker", "v1.0.0"),
        ):
            same = manifest_raw(prod.url, repo, tag) == manifest_raw(dev.url, repo, tag)
            print(f"prod {repo}:{tag}: {'same digest as dev' if same else 'DIFFERENT'}")
            if not same:
                return 1
        time.sleep(1)
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        print(f"\nmetrics at {metrics_url}:")
        for line in text.splitlines():
            if line.startswith(
                (
                    "syncd_images_synced_total",
                    "syncd_blob_bytes_copied_total",
                    "syncd_manifest_pushes_total",
                    "syncd_target_bytes",
                )
            ):
                print("  " + line)
        if args.check:
            return 0
        print(
            "\nsyncd is running (interval 30s). Push to the dev registry and watch it "
            "arrive; Ctrl-C stops the demo."
        )
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while daemon.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        registries.close()
        if os.environ.get("SYNCD_DEMO_KEEP") is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
