"""Token auth (distribution ``auth.token``) against the test issuer, through real syncs.

The registries verify every JWT against the issuer's CA; the issuer's request log shows
which grant syncd used and for which scopes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from syncd.config.load import load_config
from syncd.metrics import Metrics
from syncd.sync import open_syncer
from tests.auth.conftest import USERS, WRONG_PASSWORD, SyncdRunner
from tests.helpers.auth import TokenIssuer
from tests.helpers.images import image, layer, push
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw

RULE = {"name": "r", "source": "src", "targets": ["dst"], "repositories": ["team/app"]}


def creds(user: str, password: str | None = None) -> dict[str, str]:
    return {"username": user, "password": password or USERS[user]}


def seed(reg: Registry, issuer: TokenIssuer, repo: str, tag: str, seed_name: str) -> bytes:
    img = image(seed_name)
    push(reg.url, repo, tag, img, token=issuer.seed_token(repo))
    return img.raw


def token_registries(registries: RegistryFactory, issuer: TokenIssuer) -> tuple[Registry, Registry]:
    """A source and a target registry that both trust ``issuer``'s tokens."""
    return registries(auth=issuer.registry_auth()), registries(auth=issuer.registry_auth())


def reader_writer(src: Registry, dst: Registry) -> dict[str, dict[str, str]]:
    """Registries for the config: pull-only ``reader`` on the source, ``writer`` on the target."""
    return {"src": {"url": src.url, **creds("reader")}, "dst": {"url": dst.url, **creds("writer")}}


def at_target(reg: Registry, issuer: TokenIssuer, repo: str, tag: str) -> bytes | None:
    return manifest_raw(reg.url, repo, tag, token=issuer.seed_token(repo))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_sync_with_right_credentials(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],
    syncd: SyncdRunner,
    algorithm: str,
) -> None:
    issuer = issuers(algorithm=algorithm)
    src, dst = token_registries(registries, issuer)
    raw = seed(src, issuer, "team/app", "v1", "tok")
    cfg = syncd.config(
        reader_writer(src, dst),
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert at_target(dst, issuer, "team/app", "v1") == raw
    # pull on the source, pull,push on the target: each side asked only for what it needs
    src_scopes = {s for r in issuer.requests if r.account == "reader" for s in r.scopes}
    dst_scopes = {s for r in issuer.requests if r.account == "writer" for s in r.scopes}
    assert "repository:team/app:pull" in src_scopes
    assert not any(s.endswith("push") for s in src_scopes)
    assert "repository:team/app:pull,push" in dst_scopes


def test_wrong_password_and_missing_push_right_fail_clearly(
    registries: RegistryFactory, issuers: Callable[..., TokenIssuer], syncd: SyncdRunner
) -> None:
    issuer = issuers()
    src, dst = token_registries(registries, issuer)
    seed(src, issuer, "team/app", "v1", "tok")

    wrong = syncd.config(
        {
            "src": {"url": src.url, **creds("reader")},
            "dst": {"url": dst.url, **creds("writer", WRONG_PASSWORD)},
        },
        [RULE],
    )
    run = syncd(wrong)
    assert run.returncode == 1
    assert "authentication failed for dst (user writer)" in run.output
    assert "invalid username or password" in run.output  # the token server's own words

    # reader may pull but not push: the registry refuses the token's scope
    reader_target = syncd.config(
        {"src": {"url": src.url, **creds("reader")}, "dst": {"url": dst.url, **creds("reader")}},
        [RULE],
    )
    run = syncd(reader_target)
    assert run.returncode == 1
    assert "denied: no push permission on team/app (user reader)" in run.output
    assert at_target(dst, issuer, "team/app", "v1") is None


def test_anonymous_token_for_public_repository(
    registries: RegistryFactory, issuers: Callable[..., TokenIssuer], syncd: SyncdRunner
) -> None:
    issuer = issuers()
    src, dst = token_registries(registries, issuer)
    raw = seed(src, issuer, "public/base", "1.0", "pub")
    seed(src, issuer, "private/app", "1.0", "priv")
    rules = [{**RULE, "repositories": ["public/base"]}]
    cfg = syncd.config({"src": {"url": src.url}, "dst": {"url": dst.url, **creds("writer")}}, rules)
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert at_target(dst, issuer, "public/base", "1.0") == raw
    assert issuer.count(grant_type="anonymous", status=200) >= 1

    # The same anonymous source cannot read a private repository, and says why.
    rules = [{**RULE, "repositories": ["private/app"]}]
    run = syncd(syncd.config({"src": {"url": src.url}, "dst": {"url": dst.url}}, rules))
    assert run.returncode == 1
    assert "denied: no pull permission on private/app (anonymous)" in run.output


def test_oauth2_password_grant_once_then_refresh_tokens(
    registries: RegistryFactory, issuers: Callable[..., TokenIssuer], syncd: SyncdRunner
) -> None:
    issuer = issuers()
    src, dst = token_registries(registries, issuer)
    seed(src, issuer, "team/app", "v1", "tok")
    cfg = syncd.config(
        reader_writer(src, dst),
        [RULE],
    )
    assert syncd(cfg).returncode == 0
    # One password grant per registry (asking for a refresh token); every later token of
    # the process came from the refresh token, so the password crossed the wire once.
    assert issuer.count(method="POST", grant_type="password", account="writer") == 1
    assert issuer.count(method="POST", grant_type="password", account="reader") == 1
    assert issuer.count(method="POST", grant_type="password", offline=True) == 2
    assert issuer.count(method="POST", grant_type="refresh_token", account="writer") >= 1
    assert issuer.count(method="GET") == 0


def test_token_server_without_oauth2_falls_back_to_get(
    registries: RegistryFactory, issuers: Callable[..., TokenIssuer], syncd: SyncdRunner
) -> None:
    issuer = issuers(post_supported=False)
    src, dst = token_registries(registries, issuer)
    raw = seed(src, issuer, "team/app", "v1", "tok")
    cfg = syncd.config(
        reader_writer(src, dst),
        [RULE],
    )
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert at_target(dst, issuer, "team/app", "v1") == raw
    # One refused POST per registry, then GET with Basic for every token.
    assert issuer.count(method="POST") == 2
    assert issuer.count(method="GET", grant_type="basic", status=200) >= 3


async def test_expired_tokens_are_refreshed_within_one_process(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],
    syncd: SyncdRunner,
    tmp_path: Path,
) -> None:
    """A 2 s token lifetime: the second pass, 2.5 s later, must fetch fresh tokens."""
    issuer = issuers(lifetime=2)
    src, dst = token_registries(registries, issuer)
    seed(src, issuer, "team/app", "v1", "one")
    cfg = load_config(
        str(
            syncd.config(
                {
                    "src": {"url": src.url, **creds("reader")},
                    "dst": {"url": dst.url, **creds("writer")},
                },
                [RULE],
            )
        )
    )
    async with open_syncer(cfg, Metrics()) as syncer:
        first = await syncer.run_pass()
        assert first[0].synced == 1 and first[0].failed == 0
        before = issuer.count(status=200)
        await asyncio.sleep(2.5)  # sleep-ok: the tokens running out (2 s) is the scenario
        seed(src, issuer, "team/app", "v2", "two")
        second = await syncer.run_pass()
        assert second[0].synced == 1 and second[0].failed == 0, second
    # Expired tokens were replaced by refresh-token grants, not by resending passwords.
    assert issuer.count(status=200) > before
    assert issuer.count(grant_type="password") == 2
    late = [r for r in issuer.requests[before:] if r.status == 200]
    assert late and all(r.grant_type == "refresh_token" for r in late)


def test_token_the_registry_refuses_is_fetched_again(
    registries: RegistryFactory, issuers: Callable[..., TokenIssuer], syncd: SyncdRunner
) -> None:
    """A token that looks fresh but the registry rejects (revoked, clock skew): 401, refetch."""
    issuer = issuers()
    src, dst = token_registries(registries, issuer)
    raw = seed(src, issuer, "team/app", "v1", "tok")
    issuer.stale_tokens = 1  # the very first token syncd gets is already expired
    cfg = syncd.config(
        reader_writer(src, dst),
        [RULE],
    )
    mark = src.log_mark()
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert at_target(dst, issuer, "team/app", "v1") == raw
    assert issuer.stale_tokens == 0
    refused = [a for a in src.accesses(mark) if a.status == 401 and a.kind != "ping"]
    assert len(refused) == 1  # the stale token, answered once with a fresh one


def test_mount_across_repositories_asks_for_a_two_repository_scope(
    registries: RegistryFactory, issuers: Callable[..., TokenIssuer], syncd: SyncdRunner
) -> None:
    issuer = issuers()
    src, dst = token_registries(registries, issuer)
    base = layer("shared-base", 64 * 1024)
    a = image("a", shared=[base], layers=1)
    b = image("b", shared=[base], layers=1)
    push(src.url, "team/a", "v1", a, token=issuer.seed_token("team/a"))
    push(src.url, "team/b", "v1", b, token=issuer.seed_token("team/b"))
    rules = [
        {**RULE, "name": "first", "repositories": ["team/a"]},
        {**RULE, "name": "second", "repositories": ["team/b"]},
    ]
    cfg = syncd.config(
        reader_writer(src, dst),
        rules,
    )
    mark = dst.log_mark()
    run = syncd(cfg)
    assert run.returncode == 0, run.output
    assert at_target(dst, issuer, "team/b", "v1") == b.raw
    mounts = [x for x in dst.accesses(mark) if x.kind == "mount"]
    assert len(mounts) == 1 and f"mount={base.digest}" in mounts[0].path
    two_repo = [
        r
        for r in issuer.requests
        if {"repository:team/b:pull,push", "repository:team/a:pull"} <= set(r.scopes)
    ]
    assert two_repo and two_repo[0].account == "writer" and two_repo[0].status == 200
