"""`sglang` console script, as SGLang 0.5.23's sglang/cli/main.py: subcommands serve, version."""

from __future__ import annotations

import argparse
import sys

from .. import __version__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sglang")
    sub = parser.add_subparsers(dest="subcommand", required=True)
    sub.add_parser("serve", help="Launch an SGLang server.", add_help=False)
    sub.add_parser("version", help="Show the version information.")
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.subcommand == "version":
        print(f"sglang version: {__version__}")
        return
    from ..srt.server import serve

    # SGLang's `sglang serve <model>` also takes the model as the first positional
    if extra and not extra[0].startswith("-"):
        extra = ["--model-path", extra[0], *extra[1:]]
    serve(extra)
