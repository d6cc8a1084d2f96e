"""The `cxrclip` dispatcher: every stage is listed, only the chosen stage module is imported."""

from __future__ import annotations

import subprocess
import sys

from cxrclip.cli import COMMAND_MODULES, commands, stage_params


def test_every_command_module_declares_its_stage_constants():
    assert len(commands()) == len(COMMAND_MODULES)
    for command in commands():
        assert isinstance(stage_params(command), list)


def test_help_lists_every_stage_without_importing_torch():
    code = (
        "import sys; from cxrclip.cli import build_parser; h = build_parser().format_help(); "
        "print('torch' in sys.modules); print(h)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "False"
    for command in commands():
        assert command in out


def test_bad_params_file_exits_2_with_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cxrclip", "build-splits", "--params", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "params.yaml" in proc.stderr and "Traceback" not in proc.stderr
