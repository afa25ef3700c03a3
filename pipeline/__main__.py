"""Command line: `python -m pipeline <command> --help`."""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module in pipeline.commands exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "generate": "generate",
    "layers": "layers",
    "project": "project",
    "analyse": "analyse",
    "demo": "demo",
    "train-demo": "train_demo",
    "prune-cache": "prune_cache",
    "edit": "edit",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"pipeline.commands.{module_name}")
        summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=summary, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted (a generation run resumes from its last whole batch when rerun)", file=sys.stderr)
        return 130
    except OSError as exc:  # what a command does not report itself: a full disk, a read-only folder
        from pipeline.commands.errors import first_line

        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
