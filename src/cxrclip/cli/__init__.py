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
import ast
import functools
import importlib
import logging
import sys
from pathlib import Path
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


@functools.cache
def _constants(name: str) -> dict[str, object]:
    """``COMMAND``, ``HELP`` and ``PARAMS`` of a command module, read from its source without importing
    it (the stage modules import torch/mlflow; ``--help`` and the Snakefile need only these literals)."""
    path = Path(__file__).with_name(f"{name}.py")
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("COMMAND", "HELP", "PARAMS"):
            values[target.id] = ast.literal_eval(value)
    missing = {"COMMAND", "HELP", "PARAMS"} - set(values)
    if missing:
        raise RuntimeError(f"{path}: command module lacks literal {sorted(missing)}")
    return values


def commands() -> dict[str, str]:
    """Map subcommand name -> module name, for every available subcommand (no imports)."""
    return {
        str(_constants(name)["COMMAND"]): name
        for name in COMMAND_MODULES
        if Path(__file__).with_name(f"{name}.py").exists()
    }


def stage_params(command: str) -> list[str]:
    """Dotted params keys read by ``command`` (used by the Snakefile and the DVC drift test)."""
    return list(_constants(commands()[command])["PARAMS"])  # type: ignore[arg-type]


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``cxrclip`` parser; only the ``selected`` subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="cxrclip",
        description="CLIP for chest X-ray report retrieval: pipeline stage commands. "
        "Normally run through `snakemake --cores all` or `dvc repro`.",
    )
    parser.add_argument("--version", action="version", version=f"cxrclip {__import__('cxrclip').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command, name in commands().items():
        help_text = str(_constants(name)["HELP"])
        p = sub.add_parser(command, help=help_text, description=help_text)
        if command == selected:
            mod = _load(name)
            p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
            p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
            mod.add_arguments(p)
            p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
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
