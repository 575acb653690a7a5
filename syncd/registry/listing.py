"""Paginated listings of a registry: tag lists and the catalog.

Split from ``registry.client`` (which has one method per endpoint) because paging is the same
loop for every listing: a page size the registry may not know, ``Link`` headers to follow,
and a page limit against a registry that never stops handing out ``next`` links.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from yarl import URL

from syncd.errors import NotFoundError, ServerError
from syncd.registry.transport import Request, Response, parse_oci_errors, redact_url

if TYPE_CHECKING:
    from syncd.registry.client import RegistryClient

PAGE_SIZE = 1000
# A registry that keeps handing out `next` links must not hold us forever.
MAX_PAGES = 10_000


async def paginate(
    client: RegistryClient,
    path: str,
    key: str,
    repository: str,
    scope: str,
    *,
    missing_ok: bool = True,
) -> list[str]:
    """Every item under ``key`` of a paginated listing (tags, the catalog): pages of
    ``PAGE_SIZE`` items, following ``Link: <…>; rel="next"`` (distribution-spec "Listing
    Tags"), at most ``MAX_PAGES`` of them."""
    out: list[str] = []
    next_path: str | None = path
    query: tuple[tuple[str, str], ...] = ()
    if "page_size" not in client.transport.lacks:
        query = (("n", str(PAGE_SIZE)),)
    dropped_n = False
    for _ in range(MAX_PAGES):
        if next_path is None:
            return out
        resp = await client.send(
            Request(
                "GET",
                next_path,
                repository=repository,
                query=query,
                scopes=(scope,) if scope else (),
                # With our page size the 404 body is read: it tells a missing
                # repository (an OCI error code) from a registry that does not know
                # the ``n`` parameter (zuul-registry's plain 404 page).
                expect=(200, 404) if query else (200,),
                absent=(404,) if missing_ok else (),
            )
        )
        if resp.status == 404 and query and not _oci_error(resp.body):
            query, dropped_n = (), True
            continue
        if dropped_n and resp.status == 200:
            client.transport.lacks.add("page_size")
        if resp.status == 404:
            if missing_ok:
                return out
            raise NotFoundError(
                "not found",
                registry=client.name,
                repository=repository,
                method="GET",
                url=redact_url(resp.url),
                status=404,
                details=parse_oci_errors(resp.body),
            )
        try:
            items = json.loads(resp.body).get(key) or []
        except (ValueError, AttributeError) as e:
            raise ServerError(
                f"malformed {key} listing: {e}", registry=client.name, repository=repository
            ) from None
        out.extend(str(i) for i in items)
        next_path = next_page(resp)
        if next_path is None:
            return out
        # Link targets carry their own query (last=, n=); keep it, drop ours.
        query = ()
    raise ServerError(
        f"{key} listing exceeded {MAX_PAGES} pages", registry=client.name, repository=repository
    )


def next_page(resp: Response) -> str | None:
    """Path and query of the ``rel="next"`` link (distribution-spec "Listing Tags": the
    ``Link`` header, RFC 8288), or None on the last page. Only the path is followed: the
    next page is asked of the same registry, with the same credentials."""
    link = resp.links.get("next")
    if link is None:
        return None
    target = link.get("url")
    return target.raw_path_qs if isinstance(target, URL) else None


def _oci_error(body: bytes) -> bool:
    """Whether a body is a distribution-spec error document (``{"errors": [...]}``)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("errors"), list)
