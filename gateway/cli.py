"""The ``switchboard`` command line: serve, demo, policy, catalog, audit, approvals, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import signal
import sys
from pathlib import Path
from typing import TextIO

import structlog

from gateway.config import DEFAULT_LISTEN, Settings, embedded_defaults, load_settings
from gateway.errors import ConfigError

__all__ = ["main"]

log = structlog.get_logger("switchboard.cli")
# `switchboard bench NAME` runs bench/<script>; `make bench` runs them all.
BENCHMARKS = {"tokens": "tokens.py", "policy": "policy_bench.py", "sandbox": "sandbox_bench.py",
              "catalog": "catalog.py", "tools": "tools_bench.py", "audit": "audit_bench.py",
              "gateway": "gateway_code.py", "load": "load.py"}


def _settings(config: str | None, listen: str | None = None) -> Settings:
    settings = load_settings(Path(config)) if config else embedded_defaults()
    if listen:
        from dataclasses import replace

        settings = replace(settings, listen=listen)
    return settings


async def _serve(settings: Settings) -> int:
    import importlib

    from gateway.audit import configure_logging
    from gateway.sandbox import start_sandbox, stop_sandbox

    configure_logging(settings.audit.log_format, settings.audit.log_level,
                      decisions=settings.audit.decision_log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before LISTENING: a prompt SIGTERM drains too
        loop.add_signal_handler(sig, stop.set)
    # The sandbox processes boot first (the longest step to SERVING), while the rest of the
    # gateway (grpc, OpenTelemetry, the policy engine, the tool channel: ~0.5-1 s) is imported
    # in a thread; their outcome is awaited in create_server after the catalog and policy, so
    # a bad config or policy is still the error reported.
    sandbox = start_sandbox(settings.sandbox)
    try:
        await asyncio.to_thread(importlib.import_module, "gateway.server")
    except BaseException:
        await stop_sandbox(sandbox)
        raise
    from gateway.server import create_server  # imported above: instant

    gateway, port = await create_server(settings, sandbox_started=sandbox)
    host = settings.listen.rsplit(":", 1)[0]
    print(f"LISTENING grpc://{host}:{port}", flush=True)
    if gateway.mcp_port:
        print(f"LISTENING mcp http://{host}:{gateway.mcp_port}/mcp", flush=True)
    await stop.wait()
    log.info("shutting down", grace_s=10)
    await gateway.stop(grace=10.0)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    settings = _settings(args.config, args.listen)
    processes = args.processes if args.processes is not None else settings.processes
    if processes < 1:
        raise ConfigError("--processes must be at least 1", field="server.processes")
    settings = replace(settings, processes=processes)
    if args.process_index is not None:  # one child of a supervisor (gateway/supervisor.py)
        from gateway.supervisor import child_settings

        return asyncio.run(_serve(child_settings(settings, args.process_index,
                                                 settings.listen)))
    if processes > 1:
        from gateway.audit import configure_logging
        from gateway.supervisor import supervise

        configure_logging(settings.audit.log_format, settings.audit.log_level,
                          decisions=settings.audit.decision_log_level)
        return asyncio.run(supervise(settings, processes, config=args.config))
    return asyncio.run(_serve(settings))


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo_stack import run_demo

    return run_demo(state_dir=Path(args.state_dir))


def _policy_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.path) if args.path else None


class _EscapingWriter(io.TextIOBase):
    """stdout for commands that print text they did not write (Rego test names, ``print``
    output, error messages): terminal controls become visible escapes; line breaks stay."""

    def __init__(self, inner: TextIO) -> None:
        from gateway.audit.terminal import escape_text

        self.inner = inner
        self.escape = escape_text

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.inner.write("\n".join(self.escape(part) for part in text.split("\n")))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()


def _cmd_policy(args: argparse.Namespace) -> int:
    from gateway import policy

    with contextlib.redirect_stdout(_EscapingWriter(sys.stdout)):
        if args.policy_cmd == "test":
            return policy.cli_policy_test(_policy_dir(args), verbose=args.verbose)
        if args.policy_cmd == "eval":
            return policy.cli_policy_eval(_policy_dir(args), Path(args.input))
        return policy.cli_policy_check(_policy_dir(args))


def _cmd_catalog(args: argparse.Namespace) -> int:
    from gateway.audit.terminal import escape_text
    from gateway.catalog import load_catalog_sync

    settings = _settings(args.config)
    catalog = load_catalog_sync(settings.backends)
    hits = catalog.search(args.query, limit=args.limit)
    if args.json:
        print(json.dumps([{"name": op.name, "score": round(score, 3), "summary": op.summary,
                           "tags": list(op.tags)} for op, score in hits], indent=2))
        return 0
    if not hits:
        print("no matching operations")
        return 1
    # Names and summaries come from OpenAPI documents (third-party input): escaped.
    rows = [(score, escape_text(op.name), escape_text(op.summary)) for op, score in hits]
    width = max(len(name) for _, name, _ in rows)
    for score, name, summary in rows:
        print(f"{score:7.3f}  {name:<{width}}  {summary}")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit import cli_audit_show, cli_audit_verify

    if args.audit_cmd == "keygen":
        from gateway.audit.checkpoint import generate_key

        try:
            public = generate_key(Path(args.private_key))
        except OSError as exc:
            print(f"switchboard audit keygen: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.private_key} (keep it secret) and {public}")
        return 0

    # Files, directories or globs: positional and/or --file (repeatable), e.g. one per replica.
    named = [*(args.files or []), *(args.file or [])]
    files: list[Path | str] = list(named)
    if not files:
        configured = _settings(args.config).audit.file
        if configured is None:
            print("no audit file configured (audit.file)", file=sys.stderr)
            return 2
        files = [configured]
    if args.audit_cmd == "show":
        return cli_audit_show(args.trace_id, files, tenant=args.tenant)
    if args.audit_cmd == "checkpoint":
        from gateway.audit.cli import cli_audit_checkpoint

        return cli_audit_checkpoint(files, key=Path(args.key) if args.key else None,
                                    export=Path(args.export) if args.export else None,
                                    print_json=args.print_json)
    return cli_audit_verify(files, public_key=Path(args.public_key) if args.public_key else None,
                            checkpoints=Path(args.checkpoints) if args.checkpoints else None)


TOKENBENCH_MISSING = (
    "bench tokens: the token benchmark is its own package, switchboard-tokenbench, and it is "
    "not installed; from a source checkout run `make setup` or "
    "`pip install -e bench/tokenbench`")


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    scripts = BENCHMARKS
    bench_dir = Path(__file__).resolve().parent.parent / "bench"
    names = [args.which] if args.which != "all" else list(scripts)
    for name in names:
        if name == "tokens":
            # The token benchmark is its own distribution, not part of the server package.
            try:
                from switchboard_tokenbench import main as tokens_main
            except ImportError:
                print(TOKENBENCH_MISSING, file=sys.stderr)
                return 2
            rc = tokens_main(list(args.rest))
            if rc:
                return rc
            continue
        script = bench_dir / scripts[name]
        if not script.exists():
            print(f"bench {name}: {script} not found (run from a source checkout)",
                  file=sys.stderr)
            return 2
        sys.argv = [str(script), *args.rest]
        runpy.run_path(str(script), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard", description="Policy-routing gateway for AI agents.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("serve", help="run the gRPC gateway")
    p.add_argument("--config", help="YAML config file (default: the embedded demo defaults)")
    p.add_argument("--listen", help=f"HOST:PORT to bind (default {DEFAULT_LISTEN})")
    p.add_argument("--processes", type=int, default=None,
                   help="gateway processes on the one port (SO_REUSEPORT) under a supervisor "
                        "(default: server.processes from the config, else 1)")
    p.add_argument("--process-index", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("demo", help="start the demo backends and gateway, run the example agent")
    p.add_argument("--state-dir", default="state/demo", help="where the demo keeps its files")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("policy", help="test, evaluate or check the Rego policies")
    psub = p.add_subparsers(dest="policy_cmd", required=True)
    for name, helptext in (("test", "run every test_* rule"),
                           ("check", "compile and lint the policies")):
        q = psub.add_parser(name, help=helptext)
        q.add_argument("--path", help="policies directory (default: the shipped policies/)")
        q.add_argument("-v", "--verbose", action="store_true")
    q = psub.add_parser("eval", help="print the decision for an input document")
    q.add_argument("--input", required=True, help="JSON file with the policy input")
    q.add_argument("--path", help="policies directory (default: the shipped policies/)")
    p.set_defaults(func=_cmd_policy)

    p = sub.add_parser("catalog", help="inspect the operation catalog")
    csub = p.add_subparsers(dest="catalog_cmd", required=True)
    q = csub.add_parser("search", help="rank operations for a natural-language query")
    q.add_argument("query")
    q.add_argument("--config", help="YAML config file (default: the embedded demo defaults)")
    q.add_argument("--limit", type=int, default=10)
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_catalog)

    p = sub.add_parser("audit", help="read and verify the audit trail")
    asub = p.add_subparsers(dest="audit_cmd", required=True)
    files_help = ("audit JSONL files, directories (their *.jsonl) or glob patterns, e.g. one "
                  "per replica (default: audit.file from the config)")
    q = asub.add_parser("show", help="render one call's trace as a tree")
    q.add_argument("trace_id")
    q.add_argument("files", nargs="*", metavar="FILE", help=files_help)
    q.add_argument("--tenant", help="only the calls of this tenant (an operator's scope)")
    q.add_argument("--file", action="append", help="an audit file (repeatable); as FILE")
    q.add_argument("--config")
    q = asub.add_parser("verify", help="check each audit file's hash chain")
    q.add_argument("files", nargs="*", metavar="FILE", help=files_help)
    q.add_argument("--file", action="append", help="an audit file (repeatable); as FILE")
    q.add_argument("--config")
    q.add_argument("--public-key", help="also check the signed checkpoints (Ed25519 PEM)")
    q.add_argument("--checkpoints", metavar="EXTERNAL",
                   help="with --public-key: also check against this external copy of the "
                        "checkpoints (a file, or a directory of <file>.checkpoints)")
    q = asub.add_parser("checkpoint", help="sign each audit file's last record (Ed25519), "
                        "or print the latest checkpoint")
    q.add_argument("files", nargs="*", metavar="FILE", help=files_help)
    q.add_argument("--file", action="append", help="an audit file (repeatable); as FILE")
    q.add_argument("--config")
    q.add_argument("--key", help="sign with this Ed25519 private key (PEM), see keygen")
    q.add_argument("--export", metavar="PATH",
                   help="with --key: also append the checkpoint to PATH (a file, or a directory "
                        "for <file>.checkpoints), e.g. on another volume or a WORM mount")
    q.add_argument("--print", dest="print_json", action="store_true",
                   help="print each file's latest checkpoint as one JSON line (to ship it to "
                        "an external store); with --key, the one just signed")
    q = asub.add_parser("keygen", help="write an Ed25519 key pair for checkpoints")
    q.add_argument("private_key", help="where to write the private key (.pub beside it)")
    p.set_defaults(func=_cmd_audit)

    from gateway.approvals.cli import add_parser as add_approvals_parser

    add_approvals_parser(sub)

    p = sub.add_parser("bench", help="run the benchmarks in bench/ and print their tables")
    p.add_argument("which", nargs="?", default="all",
                   choices=["all", *BENCHMARKS])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        from gateway.audit.terminal import escape_text

        print(escape_text(f"switchboard: config error: {exc.message}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `switchboard audit show ID | head`
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
