"""CLI wiring: help works and errors are one clean line with exit code 2."""

from typer.testing import CliRunner

from autotune.cli import app

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "analyze" in result.output
