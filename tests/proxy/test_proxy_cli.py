"""The real CLI through a forward proxy that wants credentials: they work, and no output
(debug logs in both formats, ``plan``, ``validate`` errors) ever shows them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.forward_proxy import ForwardProxyFactory
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, manifest_raw

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "cli-proxy-pw-Jq4v"


def run(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "syncd", "-c", str(config), "--log-level", "debug", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )


def test_cli_through_an_authenticating_proxy_never_shows_its_password(
    source: Registry, target: Registry, forward_proxies: ForwardProxyFactory, tmp_path: Path
) -> None:
    img = image("cli-proxied", layers=1, size=2000)
    push(source.url, "team/app", "v1", img)
    proxy = forward_proxies(basic_auth=("proxyuser", PASSWORD))
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("SYNCD_CONFIG", None)
    env["HTTP_PROXY"] = proxy.url_with("proxyuser", PASSWORD)
    config = tmp_path / "syncd.yml"
    registries = {
        "src": {"url": source.url},
        # The same proxy named by the registry itself, credentials from the environment.
        "dst": {"url": target.url, "proxy": "http://proxyuser:${PROXY_PW}@" + proxy.url[7:]},
    }
    rule = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}
    config.write_text(yaml.safe_dump({"registries": registries, "rules": [rule]}))
    env["PROXY_PW"] = PASSWORD

    outputs = []
    for args in (["validate"], ["plan"], ["--log-format", "json", "once"]):
        done = run(config, env, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout + done.stderr)
    assert manifest_raw(target.url, "team/app", "v1") == img.raw
    assert len(proxy.requests(f"//{source.host}/")) > 0
    assert len(proxy.requests(f"//{target.host}/")) > 0
    assert "through proxy http://127.0.0.1" in outputs[-1]

    # A bad proxy URL is a config error at its line, without the password.
    registries["dst"]["proxy"] = f"http://proxyuser:{PASSWORD}@{proxy.url[7:]}/path"
    config.write_text(yaml.safe_dump({"registries": registries, "rules": [rule]}))
    done = run(config, env, "validate")
    assert done.returncode == 2 and "registries.dst.proxy" in done.stderr
    outputs.append(done.stdout + done.stderr)
    for text in outputs:
        assert PASSWORD not in text
