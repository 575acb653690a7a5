"""Promotion inside one registry (``dev/app`` -> ``prod/dev/app``): every blob is mounted
from the source repository, none read or uploaded, proven by the registry's access log;
with token auth the scopes asked are pull on the source and pull,push on the target; a
mount the registry refuses falls back to an upload. The registry is named with another
spelling of its host (upper case, explicit default port) to prove the same-registry test
compares normalised origins."""

from __future__ import annotations

from collections.abc import Callable

from syncd.config.schema import Config, RegistryConfig, RuleConfig
from syncd.metrics import Metrics
from syncd.secret import Secret
from tests.auth.conftest import USERS, issuers  # noqa: F401 (fixture)
from tests.helpers.auth import DEFAULT_ACL, TokenIssuer
from tests.helpers.images import image, multiarch, push
from tests.helpers.passes import sync
from tests.helpers.registry import Registry, RegistryFactory, manifest_raw

UA = "syncd/"


def promotion(
    reg: Registry, *, source_user: str | None = None, target_user: str | None = None
) -> Config:
    """``src`` and ``dst`` are one registry, spelled differently; dev/* -> prod/dev/*."""

    def creds(user: str | None) -> dict[str, object]:
        return {"username": user, "password": Secret(USERS[user])} if user else {}

    plain = reg.url.replace("127.0.0.1", "localhost")
    shouty = reg.url.replace("127.0.0.1", "LOCALHOST")
    regs = {
        "src": RegistryConfig(name="src", url=plain, **creds(source_user)),  # type: ignore[arg-type]
        "dst": RegistryConfig(name="dst", url=shouty + "/", **creds(target_user)),  # type: ignore[arg-type]
    }
    rule = RuleConfig(
        name="promote",
        source="src",
        targets=("dst",),
        repositories=("dev/app", "dev/multi"),
        target_prefix="prod/",
        retries=2,
    )
    return Config(path="<test>", registries=regs, rules=(rule,))


def seed(reg: Registry, issuer: TokenIssuer | None = None) -> list[bytes]:
    single = image("promo", layers=3)
    multi = multiarch("promo-multi")
    for repo, img in (("dev/app", single), ("dev/multi", multi)):
        kw = {"token": issuer.seed_token(repo)} if issuer else {}
        push(reg.url, repo, "v1", img, **kw)
    return [single.raw, multi.raw]


def blob_count() -> int:
    return 4 + 2 * 3  # config + 3 layers; two children of config + 2 layers


async def test_promotion_mounts_every_blob(registries: RegistryFactory) -> None:
    reg = registries()
    raws = seed(reg)
    mark = reg.log_mark()
    metrics = Metrics()
    result = await sync(promotion(reg), metrics)
    assert result.ok and result.synced == 2, result.failures
    counts = reg.counts(mark, agent=UA)
    assert counts["blob_get"] == 0 and counts["upload_put"] == 0 and counts["upload_patch"] == 0
    assert counts["mount"] == blob_count() and counts["upload_post"] == 0
    assert manifest_raw(reg.url, "prod/dev/app", "v1") == raws[0]
    assert manifest_raw(reg.url, "prod/dev/multi", "v1") == raws[1]
    mounted = metrics.blobs_mounted.labels(target="dst")._value.get()
    assert mounted == blob_count()


async def test_promotion_with_token_auth_asks_the_mount_scopes(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],  # noqa: F811
) -> None:
    issuer = issuers()
    reg = registries(auth=issuer.registry_auth())
    raws = seed(reg, issuer)
    mark = reg.log_mark()
    result = await sync(promotion(reg, source_user="reader", target_user="writer"))
    assert result.ok and result.synced == 2, result.failures
    counts = reg.counts(mark, agent=UA)
    assert counts["blob_get"] == 0 and counts["upload_put"] == 0
    assert counts["mount"] == blob_count()
    token = issuer.seed_token("prod/dev/app")
    assert manifest_raw(reg.url, "prod/dev/app", "v1", token=token) == raws[0]
    # One token for the mount: push on the target repository, pull on the source one.
    mount_scopes = {
        frozenset(r.scopes)
        for r in issuer.requests
        if r.account == "writer" and "repository:dev/app:pull" in r.scopes
    }
    assert frozenset({"repository:prod/dev/app:pull,push", "repository:dev/app:pull"}) in (
        mount_scopes
    )
    assert not any(
        s.endswith("push") for r in issuer.requests if r.account == "reader" for s in r.scopes
    )


async def test_refused_mount_falls_back_to_upload(
    registries: RegistryFactory,
    issuers: Callable[..., TokenIssuer],  # noqa: F811
) -> None:
    """The target's account may push to prod/* but not read dev/*: the registry refuses
    the mount, and each blob is uploaded instead (read once from the source account)."""
    acl = dict(DEFAULT_ACL)
    acl["writer"] = [("repository:prod/*", "pull,push")]
    issuer = issuers(acl=acl)
    reg = registries(auth=issuer.registry_auth())
    img = image("refused", layers=2)
    push(reg.url, "dev/app", "v1", img, token=issuer.seed_token("dev/app"))
    mark = reg.log_mark()
    cfg = promotion(reg, source_user="reader", target_user="writer")
    cfg = Config(
        path=cfg.path,
        registries=cfg.registries,
        rules=(RuleConfig(**{**_fields(cfg.rules[0]), "repositories": ("dev/app",)}),),
    )
    result = await sync(cfg)
    assert result.ok and result.synced == 1, result.failures
    counts = reg.counts(mark, agent=UA)
    assert counts["mount"] == 0
    assert counts["blob_get"] == 3 and counts["upload_put"] == 3
    token = issuer.seed_token("prod/dev/app")
    assert manifest_raw(reg.url, "prod/dev/app", "v1", token=token) == img.raw


def _fields(rule: RuleConfig) -> dict[str, object]:
    return {f: getattr(rule, f) for f in rule.__dataclass_fields__}
