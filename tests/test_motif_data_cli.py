import subprocess
import sys

import pytest

from motif_data.cli import build_parser


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_the_parser_loads_no_torch_or_triton():
    # `motif-data --help` (and every subcommand's) must not wait seconds for torch and Triton to import.
    code = (
        "import sys; from motif_data.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'triton', 'datatrove') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_top_level_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "motif_data", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "COMMAND" in out.stdout


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([name, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out
