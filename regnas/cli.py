"""The `regnas` command line: the launcher. Each subcommand is one small class in `regnas.commands`, registered
here, its options declared on first use; the options they share are declared here once.

Exit codes: 0 success, 1 a gate or check failed, 2 bad input or environment (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from regnas.config import count, positive
from regnas.errors import RegnasError

_COMMANDS: dict[str, type[Command]] = {}


def register_command(cls: type[Command]) -> type[Command]:
    """Class decorator: make `cls` a subcommand named `cls.name`."""
    _COMMANDS[cls.name] = cls
    return cls


class Command:
    """A subcommand: declares its options in `add_arguments`, does its work in `run`."""

    name: str
    help: str

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's options."""

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Do the work; return the exit code."""
        raise NotImplementedError


def add_rpc_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", default=None, metavar="HOST:PORT", help="a TVM RPC server (or, with --rpc-key, a tracker) on the device")
    p.add_argument("--rpc-key", default=None, help="device key to request from the TVM RPC tracker at --rpc")


def remote_from(args: argparse.Namespace):
    from regnas.runtimes import Remote

    return Remote.from_options(args.rpc, args.rpc_key)


def data_option(p: argparse.ArgumentParser, help: str, required: bool = False, default: str | None = "digits") -> None:
    """`--data` (its help says what this command reads it for) and `--image-size`, as `regnas build` declares it."""
    from regnas.config import add_options
    from regnas.workflow.build import BuildOptions

    p.add_argument("--data", required=required, default=None if required else default, help=help)
    add_options(p, BuildOptions, {"image_size"}, defaults=True)


def seed_option(p: argparse.ArgumentParser, seeds: str) -> None:
    p.add_argument("--seed", type=count, default=0, help=f"seed of {seeds} (default: 0)")


def threads_option(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    p.add_argument("--threads", type=positive, default=default, help=help)


def json_option(p: argparse.ArgumentParser, help: str = "also write the result as JSON") -> None:
    p.add_argument("--json", type=Path, default=None, help=help)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error contract: one line naming the option, exit 2 (no usage block).

    A subcommand's options are declared when it is used (parsed or asked for help): some declarations import
    the modules that own them (torch among them), which the other subcommands need not pay for."""

    def __init__(self, *args: Any, declare: Callable[[argparse.ArgumentParser], None] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self._declare = declare

    def declared(self) -> _Parser:
        """This parser with its options declared."""
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        return super(_Parser, self.declared()).parse_known_args(args, namespace)

    def format_help(self) -> str:
        return super(_Parser, self.declared()).format_help()

    def format_usage(self) -> str:
        return super(_Parser, self.declared()).format_usage()

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def make_parser(eager: bool = False) -> argparse.ArgumentParser:
    """The `regnas` parser; `eager` declares every subcommand's options now (to list them), else on first use."""
    from regnas import __version__

    parser = _Parser(prog="regnas", description="Hardware-aware model families that agree with each other.")
    parser.add_argument("--version", action="version", version=f"regnas {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-q", "--quiet", action="store_const", dest="verbosity", const=-1, default=0, help="only warnings and errors on stderr"
    )
    talk.add_argument("-v", "--verbose", action="store_const", dest="verbosity", const=1, help="debug messages on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    import regnas.commands  # noqa: F401  (registers every subcommand)

    for name, cls in _COMMANDS.items():
        p = sub.add_parser(name, help=cls.help, description=cls.help, declare=cls.add_arguments)
        p.set_defaults(_command=cls)
        if eager:
            p.declared()
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `regnas` console script."""
    from regnas.io import FULL_DISK, full_disk
    from regnas.logs import configure

    args = make_parser().parse_args(argv)
    configure(args.verbosity)
    try:
        return args._command.run(args)
    except RegnasError as exc:
        print(f"regnas: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk anywhere (a library's own write included) is the environment, not a bug
        if exc.errno not in FULL_DISK:
            raise
        print(f"regnas: error: {full_disk(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regnas: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
