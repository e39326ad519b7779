"""The `nfproof` command. Each subcommand lives in its own module (nfproof/cmd_*.py) exposing
`add_parser(subparsers)` and `run(args) -> int`.

Exit codes, shared by every command: 0 proved/explained/ok, 1 counterexample/violation,
2 usage or input error, 3 unknown (budget hit)."""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from .errors import OK, UNKNOWN, USAGE, VIOLATION, UsageError  # noqa: F401  (re-exported for commands)
from .models.api import ModelError

COMMANDS = ["verify", "run", "replay", "check", "bench", "inspect"]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the fix, exit 2."""

    def error(self, message):
        self.exit(USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nfproof",
        description="Prove and check that network-function chains survive failover.",
        epilog="exit codes: 0 proved/ok, 1 counterexample/violation, 2 usage or input error, 3 unknown",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"nfproof.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"nfproof.cmd_{name}":
                raise
            continue
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as e:
        print(f"nfproof {args.command}: error: {e}", file=sys.stderr)
        return USAGE
    except ModelError as e:
        print(f"nfproof {args.command}: model error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return UNKNOWN
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return OK
    except Exception:  # a bug in nfproof: never a verdict, so never exit 0 or 1
        traceback.print_exc()
        print(f"nfproof {args.command}: internal error (a bug in nfproof; please report the trace above)", file=sys.stderr)
        return UNKNOWN


if __name__ == "__main__":
    sys.exit(main())
