"""No password, token or refresh token ever shows up in anything syncd prints or exposes.

Two angles. The CLI runs at debug level (text and JSON logs, ``once``, ``plan``,
``plan --output json`` and ``verify``) with right and wrong credentials of every kind, and all
its output and the ``once --report`` files are searched. Then the same scenarios run
in-process with every logger at DEBUG and *no* redacting filter installed, so a leak cannot
hide behind the CLI's scrubber: log records, rendered tracebacks, failure texts, exception
``str``/``repr``, config reprs and the ``/metrics`` exposition are searched too.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from syncd.config.load import load_config
from syncd.errors import SyncdError
from syncd.metrics import Metrics
from syncd.registry.pool import ClientPool
from syncd.sync import open_syncer
from tests.auth.conftest import USERS, WRONG_PASSWORD, SyncdRunner
from tests.helpers.auth import TokenIssuer, htpasswd_auth
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory

HELPER_SECRET = "helper-secret-Vb62Qe"
FILE_SECRET_WRONG = "file-pw-wrong-Jd83Kc"

HELPER = """#!{python}
import json, sys
server = sys.stdin.read().strip()
print(json.dumps({{"ServerURL": server, "Username": "writer", "Secret": {secret!r}}}))
"""


def secrets_in(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if s in text)


def all_secrets(issuer: TokenIssuer) -> set[str]:
    """Every secret of the scenarios, including Basic header values and issued tokens."""
    passwords = {*USERS.values(), WRONG_PASSWORD, HELPER_SECRET, FILE_SECRET_WRONG}
    basic = {
        base64.b64encode(f"{user}:{pw}".encode()).decode()
        for user in [*USERS, "writer"]
        for pw in passwords
    }
    return passwords | basic | set(issuer.issued)


@pytest.fixture
def scenario(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],
    htpasswd: Path,
    syncd: SyncdRunner,
    tmp_path: Path,
) -> tuple[TokenIssuer, list[Path]]:
    """Registries of every auth kind and configs that log in right and wrong."""
    issuer = issuers()
    tok_src = registries(auth=issuer.registry_auth())
    tok_dst = registries(auth=issuer.registry_auth())
    basic = registries(auth=htpasswd_auth(htpasswd))
    push(tok_src.url, "team/app", "v1", image("red"), token=issuer.seed_token("team/app"))

    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-redact"
    helper.write_text(HELPER.format(python=sys.executable, secret=HELPER_SECRET))
    helper.chmod(0o755)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credHelpers": {basic.host: "redact"}}))
    syncd.env["PATH"] = f"{bindir}{os.pathsep}{syncd.env['PATH']}"
    syncd.env["DOCKER_CONFIG"] = str(docker)
    wrong_file = tmp_path / "wrong-password"
    wrong_file.write_text(FILE_SECRET_WRONG + "\n")

    src = {"url": tok_src.url, "username": "reader", "password": USERS["reader"]}
    rule = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}

    def to(url: str, **login: object) -> dict[str, object]:
        return {"src": src, "dst": {"url": url, **login}}

    configs = [
        # token auth, right credentials (tokens and refresh tokens are handed out)
        to(tok_dst.url, username="writer", password=USERS["writer"]),
        # token auth, wrong password
        to(tok_dst.url, username="writer", password=WRONG_PASSWORD),
        # token auth, pull-only user as target
        to(tok_dst.url, username="reader", password=USERS["reader"]),
        # Basic auth with a wrong password from a file
        to(basic.url, username="writer", password_file=str(wrong_file)),
        # Basic auth with a helper whose secret is wrong for this registry
        to(basic.url, docker_config=True),
        # Basic auth, right inline password
        to(basic.url, username="admin", password=USERS["admin"]),
    ]
    return issuer, [syncd.config(regs, [rule]) for regs in configs]


def test_cli_output_never_contains_secrets(
    scenario: tuple[TokenIssuer, list[Path]], syncd: SyncdRunner, tmp_path: Path
) -> None:
    issuer, configs = scenario
    reports = []
    for i, cfg in enumerate(configs):
        reports.append(tmp_path / f"report-{i}.json")
        # Alternate the output styles: every style meets right and wrong credentials.
        if i % 2:
            syncd(cfg, "plan", "--output", "json")
            syncd(cfg, "once", "--log-format", "json", "--report", str(reports[-1]))
        else:
            syncd(cfg, "plan")
            syncd(cfg, "once", "--log-format", "text", "--report", str(reports[-1]))
        syncd(cfg, "verify")
    outcomes = [r.returncode for r in syncd.runs if "once" in r.args]
    # the scenarios really did log in right and wrong (so secrets were in play)
    assert 0 in outcomes and 1 in outcomes
    assert any("authentication failed" in r.output for r in syncd.runs)
    assert len(issuer.issued) >= 4
    secrets = all_secrets(issuer)
    for run in syncd.runs:
        assert secrets_in(run.output, secrets) == [], run.args
    assert any("authentication failed" in r.read_text() for r in reports)
    for report in reports:
        assert secrets_in(report.read_text(), secrets) == [], report


async def test_in_process_logs_errors_metrics_and_reprs_never_contain_secrets(
    scenario: tuple[TokenIssuer, list[Path]],
    syncd: SyncdRunner,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issuer, configs = scenario
    monkeypatch.setenv("PATH", syncd.env["PATH"])
    monkeypatch.setenv("DOCKER_CONFIG", syncd.env["DOCKER_CONFIG"])
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    for path in configs:
        config = load_config(str(path))
        texts += [repr(config), str(config), *(repr(r) for r in config.registries.values())]
        metrics = Metrics()
        async with open_syncer(config, metrics) as syncer:
            for dry_run in (True, False):
                for result in await syncer.run_pass(dry_run=dry_run):
                    texts += [repr(result), *result.failures]
                    texts += [f"{e.error} {e!r}" for e in result.plan]
        texts.append(metrics.exposition().decode())
        # Exceptions as a caller sees them, with their tracebacks.
        async with ClientPool(config.registries) as pool:
            for name in config.registries:
                try:
                    await pool.client(name).with_retries(1).manifest_head("team/app", "v1")
                    await pool.client(name).with_retries(1).upload_start("team/app")
                except SyncdError as e:
                    texts += [str(e), repr(e), "".join(traceback.format_exception(e))]
                    texts += [repr(a) for a in e.args]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts += [str(v) for v in record.__dict__.values()]
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    everything = "\n".join(texts)
    assert "authentication failed" in everything  # wrong credentials were exercised
    assert len(issuer.issued) >= 4
    assert secrets_in(everything, all_secrets(issuer)) == []
