import subprocess
import sys

from shiftkit.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "usage: shiftkit" in out


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "shiftkit", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "shiftkit" in proc.stdout
