"""Generate ``docs/cli.md`` from the click commands, so the reference never drifts from the code.

    python -m embedcyto.cli.docgen > docs/cli.md      # or: --write docs/cli.md

Each command's help is rendered by click itself at a fixed width (so the output does not depend
on the terminal), sub-commands included. A test checks that ``docs/cli.md`` equals this output.
"""

from __future__ import annotations

import sys

import click

WIDTH = 100
HEADER = """# Command-line reference

Generated from the commands' own help by `python -m embedcyto.cli.docgen --write docs/cli.md`;
do not edit by hand. `embedcyto COMMAND --help` prints the same text.
"""


def _help(command: click.Command, path: list[str], parent: click.Context | None) -> str:
    settings = {**command.context_settings, "terminal_width": WIDTH,
                "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=path[-1], parent=parent, **settings)
    return command.get_help(ctx), ctx


def _sections(command: click.Command, path: list[str], parent=None) -> list[str]:
    text, ctx = _help(command, path, parent)
    level = "#" * min(len(path) + 1, 4)
    out = [f"{level} `{' '.join(path)}`", "", "```text", text.rstrip(), "```", ""]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                out += _sections(sub, path + [name], ctx)
    return out


def render_cli_docs() -> str:
    """The whole command reference as Markdown."""
    from embedcyto.cli.main import cli

    return HEADER + "\n" + "\n".join(_sections(cli, ["embedcyto"]))


def main(argv: list[str] | None = None) -> int:
    """Print the reference, or write it to the file after ``--write``."""
    args = sys.argv[1:] if argv is None else argv
    text = render_cli_docs()
    if len(args) == 2 and args[0] == "--write":
        with open(args[1], "w", encoding="utf-8") as handle:
            handle.write(text)
        return 0
    if args:
        print("usage: python -m embedcyto.cli.docgen [--write PATH]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
