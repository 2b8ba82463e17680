"""Command line: run the engine, run the built-in demo, check a config file, and a few client commands.

    edgebox --config engine.json [--grpc_port N] [--plugin_dir D] [--log_level L]
    edgebox demo                      # built-in demo: a synthetic camera with a person, alarms in the console
    edgebox check-config engine.json  # validate and exit (0 = valid)
    edgebox ctl health|metrics|cameras|workflows|infer IMAGE [--plugin person] [--target host:port]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from importlib import resources
from pathlib import Path

from edgebox import __version__
from edgebox.errors import ConfigError, StoreError

EXIT_CONFIG = 2
EXIT_STORE = 3
SUBCOMMANDS = ("run", "demo", "check-config", "ctl")
# The engine's camera decoding process (edgebox/cameras/decoder_child.py): started by the engine, not for people.
DECODER_COMMAND = "_decode-cameras"


def _engine_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="edgebox: edge video analytics engine")
    p.add_argument("--version", action="version", version=f"edgebox {__version__}")
    p.add_argument("--config", type=Path, help="engine config file (JSON); defaults apply without it")
    p.add_argument("--grpc_port", "--grpc-port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--grpc_host", "--grpc-host", help="gRPC listen address (default 127.0.0.1)")
    p.add_argument("--console_port", "--console-port", type=int, help="web console port (default 8080)")
    p.add_argument("--plugin_dir", "--plugin-dir", type=Path, help="extra folder of plugins")
    p.add_argument("--data_dir", "--data-dir", type=Path, help="folder of the state database")
    p.add_argument("--log_level", "--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return p


def _load(args: argparse.Namespace, config_path: Path | None):  # -> Config, imported lazily
    from edgebox.config import load_config, with_overrides

    cfg = load_config(config_path)
    return with_overrides(cfg, grpc_port=args.grpc_port, grpc_host=args.grpc_host, plugin_dir=args.plugin_dir,
                          log_level=args.log_level, data_dir=args.data_dir, console_port=args.console_port)


def own_command(*args: str) -> list[str]:
    """The command line that runs this program again with `args`: the binary itself when frozen (PyInstaller),
    `python -m edgebox` from a checkout or an install. The engine's child processes start this way."""
    own = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "edgebox"]
    return [*own, *args]


def setup_logging(level: str) -> None:
    """The log format of the engine and of its child processes: one line per record on stderr."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def _run(args: argparse.Namespace, config_path: Path | None) -> int:
    try:
        cfg = _load(args, config_path)
    except ConfigError as exc:
        print(f"edgebox: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log_level)
    from edgebox.engine.library_probe import ProbeChild

    probe_child = ProbeChild()  # first: its ~0.6 s of imports overlap the engine's own below
    import trio

    from edgebox.app import run_engine
    from edgebox.memory import fix_malloc_thresholds, limit_malloc_arenas

    fix_malloc_thresholds()  # before any model or camera allocates (edgebox/memory.py says why)
    limit_malloc_arenas()  # before the engine starts its threads

    def on_ready(endpoints) -> None:
        # One stable line on stdout for supervisors and tests (ports may have been chosen by the OS).
        print(f"EDGEBOX READY grpc={endpoints.grpc} console={endpoints.console or '-'}", flush=True)

    try:
        trio.run(functools.partial(run_engine, cfg, on_ready, probe_child=probe_child))
    except BaseException as exc:  # noqa: BLE001 - startup failures arrive wrapped in exception groups
        return _startup_failure(exc)
    finally:
        probe_child.close()
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _startup_failure(exc: BaseException) -> int:
    """Known failures get one clear line and an exit code; anything else is re-raised with its traceback."""
    log = logging.getLogger("edgebox")
    for leaf in _leaves(exc):
        if isinstance(leaf, StoreError):
            log.critical("%s", leaf)
            return EXIT_STORE
        if isinstance(leaf, OSError):
            log.critical("cannot start: %s", leaf)
            return 1
        if isinstance(leaf, KeyboardInterrupt):
            return 130
    raise exc


def _check_config(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edgebox check-config", description="Validate a config file and exit.")
    p.add_argument("file", type=Path)
    args = p.parse_args(argv)
    from edgebox.config import load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: invalid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.file}: valid (gRPC {cfg.grpc.host}:{cfg.grpc.port}, console "
          f"{cfg.console.host + ':' + str(cfg.console.port) if cfg.console.enabled else 'disabled'}, "
          f"data {cfg.data_dir}, {len(cfg.provision.workflows)} provisioned workflow(s), "
          f"{len(cfg.provision.cameras)} camera(s))")
    return 0


def demo_config_path() -> Path:
    return Path(str(resources.files("edgebox.demo") / "demo.json"))


def _ctl(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="edgebox ctl", description="Talk to a running engine over gRPC.")
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the engine")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("health")
    sub.add_parser("metrics")
    sub.add_parser("cameras")
    sub.add_parser("workflows")
    infer = sub.add_parser("infer", help="run one image through a plugin or workflow")
    infer.add_argument("image", type=Path)
    infer.add_argument("--plugin", default="")
    infer.add_argument("--workflow", default="")
    args = p.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    import asyncio

    from edgebox.client import EdgeboxClient, EdgeboxClientError

    async def main() -> object:
        async with EdgeboxClient(host or "127.0.0.1", int(port)) as client:
            if args.command == "health":
                return await client.health()
            if args.command == "metrics":
                return await client.metrics()
            if args.command == "cameras":
                return await client.list_cameras()
            if args.command == "workflows":
                return await client.list_workflows()
            plugin = args.plugin or ("" if args.workflow else "person")
            return await client.infer(args.image.read_bytes(), plugin=plugin, workflow_id=args.workflow)

    try:
        answer = asyncio.run(main())
    except EdgeboxClientError as exc:
        print(f"error: {exc.status.name} code {exc.code} {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach {args.target}: {exc}", file=sys.stderr)
        return 1
    items = answer if isinstance(answer, list) else [answer]
    for item in items:
        print(json.dumps(item.to_dict(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from edgebox.engine.hardware import PROBE_CHILD_COMMAND, probe_child_main

    if argv[:1] == [PROBE_CHILD_COMMAND]:  # the engine's own child (edgebox/engine/library_probe.py), not for people
        return probe_child_main()
    if argv[:1] == [DECODER_COMMAND]:
        from edgebox.cameras.decoder_child import decoder_main

        return decoder_main(argv[1:])
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    if argv and argv[0] in SUBCOMMANDS:
        argv = argv[1:]
    if command == "check-config":
        return _check_config(argv)
    if command == "ctl":
        return _ctl(argv)
    args = _engine_parser("edgebox" if command == "run" else f"edgebox {command}").parse_args(argv)
    config_path = args.config
    if command == "demo" and config_path is None:
        config_path = demo_config_path()
        if args.data_dir is None:  # not next to the packaged config (read-only in the one-file binary)
            args.data_dir = Path.cwd() / "var" / "demo"
    return _run(args, config_path)


if __name__ == "__main__":
    sys.exit(main())
