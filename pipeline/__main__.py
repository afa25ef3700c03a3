"""Command line: `python -m pipeline <command> --help`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def commands() -> dict[str, str]:
    """Command name -> module of `pipeline.commands`: every module there with add_arguments(parser) and
    run(args) -> int is a command, named after its module (`encode_real` -> `encode-real`). A new command is
    a new module; nothing else to register."""
    import pipeline.commands

    found = {}
    for info in pkgutil.iter_modules(pipeline.commands.__path__):
        module = importlib.import_module(f"pipeline.commands.{info.name}")
        if callable(getattr(module, "add_arguments", None)) and callable(getattr(module, "run", None)):
            found[info.name.replace("_", "-")] = info.name
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, module_name in commands().items():
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
