"""The `ssmkit` command and the demo entry point run (tiny settings; no timing or learning asserted)."""

from ssmkit.cli import main as cli_main
from ssmkit.demo import main as demo_main


def test_cli_usage(capsys):
    assert cli_main([]) == 2
    assert "commands: bench, demo" in capsys.readouterr().err


def test_demo_runs_and_checks_step_equals_forward(capsys):
    demo_main(["--seconds", "0.5", "--length", "24", "--d-model", "8", "--n-layers", "1", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "trivial baseline" in out and "final test MSE" in out
    assert "equal to fp32 precision" in out and "NOT equal" not in out
