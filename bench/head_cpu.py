"""CPU per request on the transport's success path: a loop of manifest HEADs.

``python -m bench.head_cpu [--heads 2000] [--repeat 3]`` starts one local
``docker-registry``, pushes one image, then times ``RegistryClient.manifest_head`` in a
loop, one request at a time, and prints syncd's CPU seconds (``time.process_time``: this
process only, not the registry's) per request. The figure is what the retry policy, the
limits and the metrics add to every request that succeeds at once; docs/reliability.md
("Cost of the retry policy") keeps the measured numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from syncd.metrics import Metrics
from syncd.registry.auth import Authenticator
from syncd.registry.client import RegistryClient
from syncd.registry.transport import Transport
from tests.helpers.images import image, push
from tests.helpers.registry import RegistryFactory


async def _heads(url: str, count: int, repeat: int) -> list[float]:
    transport = Transport(
        name="bench",
        base_url=url,
        authenticator=Authenticator(registry="bench"),
        metrics=Metrics(),
    )
    client = RegistryClient(transport)
    try:
        # Warm-up: the ping, the connection, the labelled metric children.
        for _ in range(50):
            assert await client.manifest_head("bench/img", "v1") is not None
        out = []
        for _ in range(repeat):
            start = time.process_time()
            for _ in range(count):
                await client.manifest_head("bench/img", "v1")
            out.append(time.process_time() - start)
        return out
    finally:
        await transport.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heads", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="syncd-head-cpu-") as tmp:
        factory = RegistryFactory(Path(tmp))
        try:
            reg = factory()
            push(reg.url, "bench/img", "v1", image("bench"))
            runs = asyncio.run(_heads(reg.url, args.heads, args.repeat))
        finally:
            factory.close()
    per = [r / args.heads * 1e6 for r in runs]
    print(
        f"{args.heads} HEADs x {args.repeat}: CPU s "
        + ", ".join(f"{r:.3f}" for r in runs)
        + f"; per request µs median {statistics.median(per):.0f} "
        f"(min {min(per):.0f}, max {max(per):.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
