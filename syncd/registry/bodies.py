"""Reading response bodies with a ceiling."""

from __future__ import annotations

import aiohttp


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """Read a body to its end or to ``cap`` bytes, whichever comes first.

    ``StreamReader.read(n)`` returns what has arrived so far, not n bytes, so one call can
    cut a JSON document short: loop until EOF or the cap.
    """
    buf = bytearray()
    while len(buf) < cap:
        chunk = await resp.content.read(cap - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)
