"""``python -m jobqueue.devenv up|demo``: the local environment for a person at a shell.

``up`` starts every server, prints how to reach them (also written to a file that a shell
can ``source``) and keeps them up until Ctrl-C or SIGTERM. ``demo`` is what ``make demo``
runs: the whole system on those servers, from applying a queue to its draining (see
``jobqueue.devenv.demo``).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from jobqueue import logs
from jobqueue.devenv import demo
from jobqueue.devenv.environment import Endpoints, Environment
from jobqueue.errors import JobQueueError


def _shell_exports(endpoints: Endpoints) -> str:
    lines = [
        f"export {name}={shlex.quote(value)}" for name, value in endpoints.as_environment().items()
    ]
    if endpoints.kube_bin_dir:
        lines.append(f'export PATH={shlex.quote(str(endpoints.kube_bin_dir))}:"$PATH"')
    return "\n".join(lines) + "\n"


def _print_usage(environment: Environment, env_file: Path) -> None:
    endpoints = environment.endpoints
    print(f"\nThe jobqueue local environment is up ({environment.startup_s:.1f} s to start).\n")
    print(f"  kube-apiserver   {environment.apiserver.url if environment.apiserver else '-'}")
    print(f"  kubeconfig       {endpoints.kubeconfig}")
    print(f"  PostgreSQL       {endpoints.database_url}")
    print(f"  Redis            {endpoints.redis_url}")
    print(f"  Kafka            {endpoints.kafka_bootstrap_servers}")
    print(f"\nIn another shell:\n\n  source {env_file}\n  kubectl get namespaces")
    print("  psql \"$JQ_DATABASE_URL\" -c 'select version()'\n")
    print("Press Ctrl-C to stop everything and remove its files.", flush=True)


def _serve_until_interrupted(environment: Environment, env_file: Path) -> None:
    env_file.write_text(_shell_exports(environment.endpoints))
    _print_usage(environment, env_file)
    try:
        signal.pause()
    finally:
        env_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobqueue.devenv")
    parser.add_argument("command", choices=["up", "demo"])
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(".devenv.env"),
        help="where to write the shell exports for this environment (default: .devenv.env)",
    )
    args = parser.parse_args(argv)
    logs.configure("INFO")

    try:
        with Environment() as environment:
            if args.command == "demo":
                demo.run(environment, env_file=args.env_file)
            else:
                _serve_until_interrupted(environment, args.env_file)
    except KeyboardInterrupt:
        print("\nStopped; every server is down and its files are removed.")
        return 0
    except JobQueueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
