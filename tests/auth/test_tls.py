"""HTTPS registries with a private CA, with and without client certificates (mTLS)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncd.config.schema import RegistryConfig
from syncd.errors import ConfigError
from syncd.registry.tls import ssl_context
from tests.auth.conftest import USERS, SyncdRunner
from tests.helpers.auth import TLSMaterial, htpasswd_auth
from tests.helpers.images import image, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw

RULE = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}


def seeded_source(registries: RegistryFactory, tls: TLSMaterial) -> tuple[Registry, bytes]:
    """An HTTPS source (pull side over TLS too) holding team/app:v1."""
    src = registries(tls=tls.registry_tls)
    img = image("tls")
    push(src.url, "team/app", "v1", img, context=tls.client_context())
    return src, img.raw


def test_https_with_ca_file(
    registries: RegistryFactory, tls: TLSMaterial, syncd: SyncdRunner
) -> None:
    src, raw = seeded_source(registries, tls)
    dst = registries(tls=tls.registry_tls)
    ca = str(tls.ca_file)
    cfg = syncd.config(
        {"src": {"url": src.url, "ca_file": ca}, "dst": {"url": dst.url, "ca_file": ca}}, [RULE]
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", context=tls.client_context()) == raw
    assert "TLS verification is off" not in run.output


def test_https_without_the_ca_fails_naming_host_and_reason(
    registries: RegistryFactory, tls: TLSMaterial, syncd: SyncdRunner
) -> None:
    src, _ = seeded_source(registries, tls)
    dst = registries(tls=tls.registry_tls)
    cfg = syncd.config(
        {"src": {"url": src.url, "ca_file": str(tls.ca_file)}, "dst": {"url": dst.url}}, [RULE]
    )
    run = syncd(cfg)
    assert run.returncode == 1
    assert f"TLS certificate verification failed for {dst.host}" in run.output
    assert re.search(r"certificate verify failed|unable to get local issuer", run.output)
    assert manifest_raw(dst.url, "team/app", "v1", context=tls.client_context()) is None


def test_tls_verify_false_works_and_warns(
    registries: RegistryFactory, tls: TLSMaterial, syncd: SyncdRunner
) -> None:
    src, raw = seeded_source(registries, tls)
    dst = registries(tls=tls.registry_tls)
    cfg = syncd.config(
        {
            "src": {"url": src.url, "ca_file": str(tls.ca_file)},
            "dst": {"url": dst.url, "tls_verify": False},
        },
        [RULE],
    )
    run = syncd(cfg, log_level="info")
    assert run.returncode == 0, run.output
    assert manifest_raw(dst.url, "team/app", "v1", context=tls.client_context()) == raw
    assert re.search(r"WARNING.*registry dst: TLS verification is off", run.output)


def test_mtls_with_client_certificate_and_basic_auth(
    registries: RegistryFactory, tls: TLSMaterial, syncd: SyncdRunner, htpasswd: Path
) -> None:
    """The target demands a client certificate from our CA *and* a password."""
    src, raw = seeded_source(registries, tls)
    dst = registries(tls=tls.registry_tls, http=tls.mtls_http, auth=htpasswd_auth(htpasswd))
    ca = str(tls.ca_file)
    login = {"username": "writer", "password": USERS["writer"]}

    # separate cert and key files
    cfg = syncd.config(
        {
            "src": {"url": src.url, "ca_file": ca},
            "dst": {
                "url": dst.url,
                "ca_file": ca,
                "client_cert": str(tls.client_cert),
                "client_key": str(tls.client_key),
                **login,
            },
        },
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    ctx = tls.client_context(with_cert=True)
    assert (
        manifest_raw(dst.url, "team/app", "v1", context=ctx, auth=("writer", USERS["writer"]))
        == raw
    )

    # no client certificate: refused in the handshake, and the error says so
    cfg = syncd.config(
        {"src": {"url": src.url, "ca_file": ca}, "dst": {"url": dst.url, "ca_file": ca, **login}},
        [{**RULE, "name": "again"}],
    )
    run = syncd(cfg)
    assert run.returncode == 1
    assert f"TLS handshake with {dst.host} failed" in run.output
    assert "refused the client certificate" in run.output


def test_mtls_with_key_and_certificate_in_one_file(
    registries: RegistryFactory, tls: TLSMaterial, syncd: SyncdRunner
) -> None:
    src, raw = seeded_source(registries, tls)
    dst = registries(tls=tls.registry_tls, http=tls.mtls_http)
    ca = str(tls.ca_file)
    cfg = syncd.config(
        {
            "src": {"url": src.url, "ca_file": ca},
            "dst": {"url": dst.url, "ca_file": ca, "client_cert": str(tls.client_combined)},
        },
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    ctx = tls.client_context(with_cert=True)
    assert manifest_raw(dst.url, "team/app", "v1", context=ctx) == raw


def test_ssl_context_choices(tls: TLSMaterial) -> None:
    plain = RegistryConfig(name="p", url="http://127.0.0.1:5000", ca_file=str(tls.ca_file))
    assert ssl_context(plain) is True  # no TLS, nothing to configure
    assert ssl_context(RegistryConfig(name="n", url="https://h", tls_verify=False)) is False
    ctx = ssl_context(RegistryConfig(name="d", url="registry.example.com"))
    assert not isinstance(ctx, bool) and ctx.check_hostname
    # tls_verify false with a client certificate: no server check, certificate still sent
    ctx = ssl_context(
        RegistryConfig(
            name="m", url="https://h", tls_verify=False, client_cert=str(tls.client_combined)
        )
    )
    assert not isinstance(ctx, bool) and not ctx.check_hostname


def test_bad_tls_files_are_config_errors_naming_registry_and_file(tls: TLSMaterial) -> None:
    bad = tls.ca_file.parent / "not-a-cert.pem"
    bad.write_text("hello\n")
    with pytest.raises(ConfigError, match=r"registry r: ca_file .*not-a-cert\.pem"):
        ssl_context(RegistryConfig(name="r", url="https://h", ca_file=str(bad)))
    with pytest.raises(ConfigError, match=r"registry r: client_cert/client_key .*not-a-cert"):
        ssl_context(RegistryConfig(name="r", url="https://h", client_cert=str(bad)))
    with pytest.raises(ConfigError, match="client_key is set without client_cert"):
        ssl_context(RegistryConfig(name="r", url="https://h", client_key=str(bad)))
