"""``cxrclip`` command line: one thin subcommand per pipeline stage.

Each subcommand lives in its own module under ``cxrclip.cli`` and defines:

- ``COMMAND``: the subcommand name (kebab-case, e.g. ``parse-reports``);
- ``HELP``: one line for ``cxrclip --help``;
- ``PARAMS``: the dotted ``params.yaml`` keys the stage reads (the single source for the
  Snakemake rule's ``params:`` and the DVC stage's ``params:``);
- ``add_arguments(parser)``: input/output paths as options;
- ``run(args, params) -> None``: ``params`` holds only the keys in ``PARAMS``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from cxrclip.config import ParamsError, load_params, select_params
from cxrclip.errors import CxrclipError

#: Subcommand modules, in pipeline order.
COMMAND_MODULES = [
    "synth",
    "download",
    "parse_reports",
    "verify_images",
    "build_splits",
    "data_summary",
    "score",
    "finetune",
    "evaluate",
    "render_tables",
    "render_figures",
]


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"cxrclip.cli.{name}")


def commands() -> dict[str, ModuleType]:
    """Map subcommand name -> module, for every available subcommand."""
    out = {}
    for name in COMMAND_MODULES:
        try:
            mod = _load(name)
        except ModuleNotFoundError as exc:  # a stage not built yet must not break the others
            if exc.name == f"cxrclip.cli.{name}":
                continue
            raise
        out[mod.COMMAND] = mod
    return out


def stage_params(command: str) -> list[str]:
    """Dotted params keys read by ``command`` (used by the Snakefile and the DVC drift test)."""
    return list(commands()[command].PARAMS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrclip",
        description="CLIP for chest X-ray report retrieval: pipeline stage commands. "
        "Normally run through `snakemake --cores all` or `dvc repro`.",
    )
    parser.add_argument("--version", action="version", version=f"cxrclip {__import__('cxrclip').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, mod in commands().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    mod = args._module
    try:
        params = select_params(load_params(args.params), list(mod.PARAMS))
        mod.run(args, params)
    except (ParamsError, CxrclipError) as exc:
        print(f"cxrclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
