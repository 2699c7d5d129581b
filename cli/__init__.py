"""The thin Typer app of nmt, installed under the import name ``nmt_cli`` (see pyproject.toml)."""
