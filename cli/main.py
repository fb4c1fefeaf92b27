"""Entry point of the ``spriteforge`` command.

Sub-commands live in one module each (``cli/<name>.py``) exposing
``register(subparsers)``; the parser they add sets ``func(args) -> int``.
Errors print ``CODE: message`` and exit with the code's number; ``--debug`` adds
the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import os
import sys

from ..version import __version__
from ..errors import SpriteForgeError, classify

COMMANDS = ("doctor", "inspect", "generate", "edit", "pixel", "rmbg", "run", "submit", "convert", "tileset")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spriteforge",
        description="SpriteForge: DiT generation, pixel-art tools and background removal, without the editor.",
    )
    parser.add_argument("--version", action="version", version=f"spriteforge {__version__}")
    _global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__package__}.{name}":
                continue
            raise
        mod.register(sub)
    for sp in sub.choices.values():  # the global flags work after the sub-command too (`spriteforge generate ... -q`)
        _global_flags(sp, default=argparse.SUPPRESS)
    return parser


def _global_flags(p: argparse.ArgumentParser, default=False) -> None:
    """--debug, --log-json and -q/--quiet on ``p``; with ``default=SUPPRESS`` an absent flag leaves the
    main parser's value alone."""
    have = {o for a in p._actions for o in a.option_strings}
    for flags, help_ in ((("--debug",), "show tracebacks on errors"), (("--log-json",), "write log lines as JSON objects"),
                         (("-q", "--quiet"), "no progress bars")):
        if not have & set(flags):
            p.add_argument(*flags, action="store_true", default=default, help=help_)


def main(argv: list[str] | None = None) -> int:
    from ..engines.policy import apply_env_before_torch

    if argv is None:  # the `spriteforge` program: no final garbage collection over torch's millions of objects at exit
        atexit.register(gc.freeze)  # (seconds; atexit handlers and finalizers still run). Callers passing argv keep theirs.

    apply_env_before_torch()  # ROCm variables that only work if set before torch is imported
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..log import configure

    configure(json_mode=args.log_json, quiet=args.quiet)
    from ..progress import set_cli_bars

    set_cli_bars(not args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return rc
    except BrokenPipeError:
        return _reader_went_away()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes a coded error
        err = classify(exc, context=f"running `spriteforge {args.command}`")
        if args.debug:
            import traceback

            traceback.print_exc()
        if args.log_json:
            print(json.dumps({"error": err.to_dict()}), file=sys.stderr)
        else:
            print(f"{err.code}: {err.message}" + (f"\n  what to do: {err.hint}" if err.hint else ""), file=sys.stderr)
        return err.exit_code if isinstance(err, SpriteForgeError) else 1


def _reader_went_away() -> int:
    """The reader of our output closed it (``spriteforge ... | head``): stop quietly, as Unix tools do on SIGPIPE.

    stdout goes to /dev/null so that the interpreter's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to flush at exit
        pass
    return 128 + 13  # what a shell reports for a command ended by SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
