"""``convdsl lsp``: the language server for editors (LSP over stdio)."""
from __future__ import annotations

import click

from convdsl.cli.common import main
from convdsl.errors import UsageError


@main.command()
@click.option("--stdio", is_flag=True, help="Talk LSP on stdin/stdout (the default and only transport).")
def lsp(stdio):
    """Run the CDL language server: diagnostics, shape hints, hover, completion, navigation, formatting."""
    try:
        from convdsl.lsp.server import main as serve
    except ImportError as e:
        raise UsageError(f"the language server needs the 'lsp' extra ({e.name} is missing)",
                         hint="pip install 'convdsl[lsp]'") from None
    serve()
