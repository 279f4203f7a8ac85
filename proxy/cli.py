"""The `agentsync-proxy` command: serve, check, demo and simulator."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import structlog

from proxy import __version__, clients, demo, logs, serving
from proxy.errors import TokenError
from proxy.settings import OPTIONS, ConfigError, Settings, load_settings
from proxy.token_endpoint import Token, TokenEndpoint
from proxy.tokens import TokenSource

COMMANDS = {
    "serve": "run the proxy (the command when none is given)",
    "check": "validate the configuration, fetch one token and print its scope and expiry",
    "demo": "the AgentSync simulator and a proxy wired to it, in one process; no credentials",
    "simulator": "the AgentSync simulator alone: token endpoint, API and /_simulator/ controls",
}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def usage() -> str:
    """What `agentsync-proxy --help` prints: every command, one line each."""
    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {name:<{width}}  {does}" for name, does in COMMANDS.items())
    return (
        "usage: agentsync-proxy [COMMAND] [OPTIONS]\n\n"
        "Authenticating reverse proxy for AgentSync's APIs.\n\n"
        f"commands:\n{commands}\n\n"
        "`agentsync-proxy COMMAND --help` shows that command's options."
    )


def settings_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"agentsync-proxy {command}",
        usage="%(prog)s [OPTIONS]",
        description=f"agentsync-proxy {command}: {COMMANDS[command]}.",
        epilog=(
            "Each flag's environment variable is named beside it; in a --config file a setting's"
            " key is its flag without the dashes, in snake case (rate_limit_wait = 10). The"
            " client secret has no flag (a command line is visible to every user): give"
            " AGENTSYNC_CLIENT_SECRET or --client-secret-file."
        ),
    )
    parser.add_argument("--version", action="version", version=f"agentsync-proxy {__version__}")
    for option in (flagged for flagged in OPTIONS if flagged.flag):
        name, described = option.flag_name, f"{option.help} (env {option.env})"
        if option.switch:  # given without a value, it reads as true
            parser.add_argument(
                name, dest=option.name, action="store_const", const="true", help=described
            )
        else:
            parser.add_argument(name, dest=option.name, metavar=option.metavar, help=described)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return EXIT_OK
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "serve"
    try:
        if command in ("serve", "check"):
            args = settings_parser(command).parse_args(argv)
            settings = load_settings(vars(args), environ)
            logs.configure(settings.log_format, settings.log_level)
            for warning in settings.warnings:
                structlog.get_logger("proxy").warning("config_warning", problem=warning)
            if command == "serve":
                return serving.serve(settings, argv, environ)
            return check(settings)
        return demo.main(command, argv, environ)
    except ConfigError as error:
        for problem in error.problems:
            print(f"agentsync-proxy: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def check(settings: Settings) -> int:
    """Configuration is valid (else exit 2 already); now fetch one token and describe it. The
    verdict is printed once the event loop has ended, after anything a retry still logs."""
    outcome = asyncio.run(_one_token(settings))
    if isinstance(outcome, TokenError):
        print(f"agentsync-proxy: {outcome.code}: {outcome.description}", file=sys.stderr)
        return EXIT_FAILED
    expiry = datetime.fromtimestamp(outcome.expires_at_wall, UTC).isoformat(timespec="seconds")
    print(f"configuration: ok ({settings.environment}, API {settings.api_base_url})")
    print(
        f"token: ok, scope {outcome.scope or '(none)'}, expires {expiry}"
        f" (in {outcome.lifetime:.0f} s)"
    )
    return EXIT_OK


async def _one_token(settings: Settings) -> Token | TokenError:
    async with clients.token_session(settings) as session:
        source = TokenSource(
            TokenEndpoint(session, settings),
            requests_per_minute=settings.token_requests_per_minute,
            wait_timeout=settings.token_timeout,
        )
        try:
            return await source.token()
        except TokenError as error:
            return error
        finally:
            await source.close()
