"""The ``syncd`` command: argument parsing, the composition root, and exit statuses.

Exit statuses (contract): 0 success; 1 some image failed or a registry error; 2 the config
(or the command line) is unusable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from syncd import __version__, event_loop
from syncd.config.load import load_config
from syncd.config.schema import Config, RuleConfig
from syncd.errors import ConfigError, SyncdError
from syncd.logs import configure
from syncd.plan import PlanEntry
from syncd.proxy import env_proxies
from syncd.report import rule_report, run_report, write_report
from syncd.sync import RulePassResult, open_syncer

log = logging.getLogger("syncd")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
DEFAULT_SHUTDOWN_TIMEOUT = 30.0


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The flags accepted both before and after the command."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "-c", "--config", default=default, metavar="FILE", help="config file (env SYNCD_CONFIG)"
    )
    parser.add_argument(
        "--listen",
        default=default,
        metavar="HOST:PORT",
        help="HTTP server address for run (and once, when given)",
    )
    parser.add_argument(
        "--log-format",
        default=default,
        type=str.lower,
        choices=["json", "text"],
        help="log format (default text)",
    )
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="log level, any case (default info)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncd", description="Keep container images in step across OCI registries."
    )
    parser.add_argument("--version", action="version", version=f"syncd {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="load and check the config")
    _common(p, suppress=True)

    for name, text in (
        ("plan", "show what would be copied, write nothing"),
        ("once", "one full pass, then exit"),
        ("verify", "check every selected tag and what it references at the targets; write nothing"),
    ):
        p = sub.add_parser(name, help=text)
        _common(p, suppress=True)
        p.add_argument("--rule", metavar="NAME", help="only this rule")
        if name == "once":
            p.add_argument(
                "--report",
                metavar="FILE",
                help="write the JSON run report of the pass to FILE (also when images failed)",
            )
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="resolve and report like plan through a pass; write and delete nothing",
            )
        if name == "plan":
            p.add_argument(
                "--output",
                choices=["text", "json"],
                default="text",
                type=str.lower,
                help="output format",
            )

    p = sub.add_parser(
        "status", help="the latest run report of every rule, from the running daemon"
    )
    _common(p, suppress=True)
    p.add_argument(
        "--output", choices=["text", "json"], default="text", type=str.lower, help="output format"
    )

    p = sub.add_parser("schema", help="print the JSON Schema of the config file")
    _common(p, suppress=True)

    p = sub.add_parser("run", help="the long-lived daemon")
    _common(p, suppress=True)
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="how long in-flight copies may finish after SIGTERM (default 30)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.config or os.environ.get("SYNCD_CONFIG")
    redactor = configure(args.log_format or "text", args.log_level or "info")
    if args.command == "schema":
        from syncd.config.json_schema import config_json_schema

        print(json.dumps(config_json_schema(), indent=2))
        return EXIT_OK
    if args.command == "status" and not path:
        return _status(None, args.listen, args.output)
    if not path:
        print("syncd: no config file: use -c FILE or set SYNCD_CONFIG", file=sys.stderr)
        return EXIT_CONFIG
    try:
        event_loop.loop_factory()  # an unknown SYNCD_EVENT_LOOP is a usage error, said at once
    except ConfigError as e:
        print(f"syncd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "run":
        from syncd.daemon.lifecycle import serve
        from syncd.metrics import Metrics

        metrics = Metrics()
        try:
            status: int = event_loop.run(
                serve(
                    path,
                    listen=args.listen,
                    shutdown_timeout=args.shutdown_timeout,
                    metrics=metrics,
                    on_config=lambda config: redactor.add_all(_secrets_of(config)),
                )
            )
        except KeyboardInterrupt:
            return 130
        return status
    try:
        config = load_config(path)
    except ConfigError as e:
        for line in [str(p) for p in e.problems] or [str(e)]:
            print(redactor.scrub(line), file=sys.stderr)
        return EXIT_CONFIG
    redactor.add_all(_secrets_of(config))
    if args.command == "validate":
        print(f"{path}: valid ({len(config.registries)} registries, {len(config.rules)} rules)")
        return EXIT_OK
    if args.command == "status":
        return _status(config, args.listen, args.output)
    rules = list(config.rules)
    if args.rule:
        rule = config.rule(args.rule)
        if rule is None:
            names = ", ".join(r.name for r in config.rules)
            print(f"syncd: no rule named {args.rule!r} (rules: {names})", file=sys.stderr)
            return EXIT_CONFIG
        rules = [rule]
    try:
        if args.command == "plan":
            return event_loop.run(_plan(config, rules, args.output))
        if args.command == "verify":
            return event_loop.run(_verify(config, rules))
        if args.dry_run:
            if args.report:
                print("syncd: once --dry-run writes no run report (drop --report)", file=sys.stderr)
                return EXIT_CONFIG
            return event_loop.run(_plan(config, rules, "text", summary=True))
        return event_loop.run(_once(config, rules, args.listen, args.report))
    except KeyboardInterrupt:
        print("syncd: interrupted", file=sys.stderr)
        return 130
    except ConfigError as e:
        print(f"syncd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except SyncdError as e:
        print(redactor.scrub(f"syncd: {e}"), file=sys.stderr)
        return e.exit_code


def _secrets_of(config: Config) -> list[str]:
    out = [r.password.reveal() for r in config.registries.values() if r.password]
    out += [
        a.password.reveal() for r in config.registries.values() for a in r.credentials if a.password
    ]
    proxies = [r.proxy for r in config.registries.values() if r.proxy]
    out += [p.password.reveal() for p in proxies if p.password]
    with contextlib.suppress(ValueError):  # a bad variable is reported when a pool reads it
        env = env_proxies(os.environ)
        out += [p.password.reveal() for p in (env.https, env.http) if p and p.password]
    if config.server.webhook_token:
        out.append(config.server.webhook_token.reveal())
    return out


# -- once ---------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def summary_line(total: RulePassResult, seconds: float) -> str:
    return (
        f"summary: images synced={total.synced} skipped={total.skipped} failed={total.failed}"
        f" blobs copied={total.blobs_copied} skipped={total.blobs_skipped}"
        f" mounted={total.blobs_mounted} referrers={total.referrers_copied}"
        f" deleted={total.deleted}"
        f" bytes={total.bytes_copied} ({_human(total.bytes_copied)}) seconds={seconds:.2f}"
    )


class _Progress:
    """A one-line progress display, only when stdout is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stdout.isatty()
        self.done = 0
        self.rule = ""

    def tick(self, rule: str, result: RulePassResult) -> None:
        if not self.enabled:
            return
        self.done += 1
        sys.stdout.write(
            f"\r{rule}: {result.synced} synced, {result.skipped} up to date, "
            f"{result.failed} failed, {_human(result.bytes_copied)}\x1b[K"
        )
        sys.stdout.flush()

    def end(self) -> None:
        if self.enabled and self.done:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()


async def _once(
    config: Config, rules: list[RuleConfig], listen: str | None, report: str | None
) -> int:
    # Without --listen nothing would ever read the metrics: a one-shot pass in CI then
    # skips prometheus_client's import and the bookkeeping of every request.
    metrics = None
    server = None
    results: list[RulePassResult] = []
    if listen:
        from syncd.daemon.lifecycle import parse_listen
        from syncd.metrics import Metrics
        from syncd.server import HttpServer

        metrics = Metrics()

        try:
            host, port = parse_listen(listen)
        except ValueError as e:
            raise ConfigError(f"--listen: {e}") from None
        server = HttpServer(
            metrics=metrics,
            ready=lambda: True,
            trigger=lambda events: [],
            webhook_token=lambda: None,
            status=lambda: run_report(rule_report(r) for r in results),
        )
        await server.start(host, port)
    start = time.monotonic()
    total = RulePassResult("*")
    progress = _Progress()
    try:
        async with open_syncer(
            config, metrics, track_target_bytes=server is not None, probe_up_to_date=False
        ) as syncer:
            syncer.progress = progress.tick
            for rule in rules:
                results.append(await syncer.run_rule(rule))
                total.add(results[-1])
    finally:
        progress.end()
        if server is not None:
            await server.aclose()
    for failure in total.failures:
        print(f"failed: {failure}", file=sys.stderr)
    for note in total.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary_line(total, time.monotonic() - start), flush=True)
    if report:
        try:
            write_report(report, run_report(rule_report(r) for r in results))
        except OSError as e:
            print(f"syncd: cannot write the report {report}: {e}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK if total.ok else EXIT_FAILED


# -- plan ---------------------------------------------------------------------------------
_ACTION_TEXT = {
    "up_to_date": "up to date",
    "copy": "copy",
    "overwrite_refused": "overwrite refused",
    "filtered": "filtered",
    "immutable": "immutable (not checked)",
    "referrer": "copy referrer",
    "unsigned": "unsigned (refused)",
    "failed": "error",
    "delete": "delete",
    "keep": "keep (not deleted)",
    "delete_held": "delete held back (over max_deletions)",
}
# Plan actions that mean the image would not reach its target.
_ERROR_ACTIONS = ("failed", "unsigned")


def _plan_json(entries: list[PlanEntry]) -> dict[str, Any]:
    images = []
    for e in entries:
        images.append(
            {
                "rule": e.rule,
                "source": e.source,
                "tag": e.tag,
                "source_digest": e.source_digest or None,
                "digest": e.digest or None,
                "target": e.target or None,
                "action": e.action,
                "platforms_filtered": e.filtered_index,
                "missing_blobs": [
                    {"digest": b.digest, "size": b.size, "media_type": b.media_type}
                    for b in e.missing_blobs
                ],
                "missing_manifests": e.missing_manifests,
                "missing_bytes": e.missing_bytes,
                **({"artifact_type": e.referrer_type} if e.action == "referrer" else {}),
                **({"error": e.error} if e.error else {}),
            }
        )
    copies = [e for e in entries if e.action == "copy"]
    return {
        "images": images,
        "totals": {
            "copy": len(copies),
            "up_to_date": sum(e.action == "up_to_date" for e in entries),
            "overwrite_refused": sum(e.action == "overwrite_refused" for e in entries),
            "filtered": sum(e.action == "filtered" for e in entries),
            "referrers": sum(e.action == "referrer" for e in entries),
            "unsigned": sum(e.action == "unsigned" for e in entries),
            "delete": sum(e.action == "delete" for e in entries),
            "delete_held": sum(e.action == "delete_held" for e in entries),
            "errors": sum(e.action in _ERROR_ACTIONS for e in entries),
            "missing_blobs": len({(e.target, b.digest) for e in copies for b in e.missing_blobs}),
            # A blob missing for several images of one target is transferred once.
            "missing_bytes": sum(
                {(e.target, b.digest): b.size for e in copies for b in e.missing_blobs}.values()
            ),
        },
    }


async def _plan(
    config: Config, rules: list[RuleConfig], output: str, *, summary: bool = False
) -> int:
    """``plan``, and ``once --dry-run`` (``summary``: also the summary line of ``once``)."""
    start = time.monotonic()
    total = RulePassResult("*")
    async with open_syncer(
        config, None, track_target_bytes=False, probe_up_to_date=False
    ) as syncer:
        for rule in rules:
            total.add(await syncer.run_rule(rule, dry_run=True))
    for note in total.notes:
        print(f"note: {note}", file=sys.stderr)
    doc = _plan_json(total.plan)
    if output == "json":
        print(json.dumps(doc, indent=2))
    else:
        current = ""
        for e in total.plan:
            if e.rule != current:
                current = e.rule
                print(f"rule {e.rule}:")
            action = _ACTION_TEXT.get(e.action, e.action)
            line = f"  {e.source}:{e.tag}"
            if e.target:
                line += f" -> {e.target}"
            line += f"  {action}"
            if e.digest:
                line += f"  {e.digest}"
            if e.action == "referrer" and e.referrer_type:
                line += f" ({e.referrer_type})"
            if e.filtered_index:
                line += f" (new index, platforms filtered from {e.source_digest})"
            if e.action == "copy":
                line += (
                    f"  missing {len(e.missing_blobs)} blobs, {e.missing_manifests}"
                    f" manifests, {_human(e.missing_bytes)}"
                )
            if e.error:
                line += f"  ({e.error})"
            print(line)
        t = doc["totals"]
        print(
            f"total: {t['copy']} to copy, {t['up_to_date']} up to date, "
            f"{t['overwrite_refused']} overwrite refused, {t['filtered']} filtered, "
            f"{t['referrers']} referrers, {t['delete']} to delete, {t['errors']} errors; "
            f"{t['missing_blobs']} blobs, {_human(t['missing_bytes'])} to transfer"
        )
    if summary:
        print(summary_line(total, time.monotonic() - start), flush=True)
    # A rule that could not even be listed (no catalog, registry down) has no plan entries
    # but is a registry error all the same.
    return EXIT_FAILED if doc["totals"]["errors"] or total.failed else EXIT_OK


# -- verify -------------------------------------------------------------------------------
async def _verify(config: Config, rules: list[RuleConfig]) -> int:
    from syncd.verify import verify_config

    result = await verify_config(config, rules)
    for problem in result.problems:
        print(problem)
    print(
        f"verify: {result.tags} tags checked at targets, {result.manifests} manifests,"
        f" {result.blobs} blobs; {len(result.problems)} problems",
        flush=True,
    )
    return EXIT_OK if result.ok else EXIT_FAILED


# -- status -------------------------------------------------------------------------------
def _status(config: Config | None, listen: str | None, output: str) -> int:
    from syncd.daemon.lifecycle import DEFAULT_LISTEN
    from syncd.status import StatusUnavailableError, format_status, read_status

    address = listen or (config.server.listen if config else None) or DEFAULT_LISTEN
    stored: dict[str, Any] = {}
    if config is not None and config.cluster is not None:
        # A cluster's reports live in etcd (imported only then: the etcd client).
        from syncd.cluster.store import stored_reports

        saved = stored_reports(config.cluster)
    elif config is not None:
        from syncd.state_sqlite import open_state

        store = open_state(config)
        try:
            saved = store.reports()
        finally:
            store.close()
        # The rules of this config, in its order: a store may outlive renamed rules.
        stored = {r.name: saved[r.name] for r in config.rules if r.name in saved}
    try:
        doc = read_status(address, stored=stored)
    except (StatusUnavailableError, ValueError) as e:
        print(f"syncd: no run report: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(doc, indent=2) if output == "json" else format_status(doc))
    return EXIT_OK
