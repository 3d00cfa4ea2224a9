"""The ``embedcyto`` command group.

Sub-commands are imported lazily, so ``embedcyto --help`` is instant and never imports torch.
Library errors (:class:`embedcyto.errors.EmbedcytoError`) become one-line click errors.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging

import click

# name -> "module:attribute"; one module per command.
COMMANDS = {
    "datasets": "embedcyto.cli.datasets:datasets",
    "models": "embedcyto.cli.models:models",
    "extract": "embedcyto.cli.extract:extract",
    "store": "embedcyto.cli.store:store",
    "probe": "embedcyto.cli.probe:probe",
    "lora": "embedcyto.cli.lora:lora",
    "report": "embedcyto.cli.report:report",
    "compare": "embedcyto.cli.compare:compare",
    "predict": "embedcyto.cli.predict:predict",
    "demo": "embedcyto.cli.demo:demo",
    "init": "embedcyto.cli.workspace:init",
    "status": "embedcyto.cli.workspace:status",
}


def _available(target: str) -> bool:
    module = target.split(":")[0]
    return importlib.util.find_spec(module) is not None


class LazyGroup(click.Group):
    """A group whose commands are imported only when invoked (or listed by --help)."""

    def list_commands(self, ctx):
        return sorted(name for name, target in COMMANDS.items() if _available(target))

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module, attr = target.split(":")
        command = getattr(importlib.import_module(module), attr)
        return _with_clean_errors(command)


def _with_clean_errors(command: click.Command) -> click.Command:
    """Wrap a command (and its sub-commands) so library errors print without a traceback."""
    if getattr(command, "_embedcyto_wrapped", False):
        return command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_clean_errors(sub)
    if command.callback is not None:
        original = command.callback

        @functools.wraps(original)
        def callback(*args, **kwargs):
            from embedcyto.errors import EmbedcytoError

            try:
                return original(*args, **kwargs)
            except EmbedcytoError as err:
                raise click.ClickException(str(err)) from err

        command.callback = callback
    command._embedcyto_wrapped = True
    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="embedcyto")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--workspace", type=click.Path(), default=None, envvar="EMBEDCYTO_WORKSPACE",
              help="Workspace file or folder (default: $EMBEDCYTO_WORKSPACE, else embedcyto.toml "
                   "in this folder or the nearest folder above).")
def cli(verbose: int, workspace) -> None:
    """Pick the vision foundation model for a cytology task, and see whether LoRA pays off.

    Typical use, in a workspace folder (`embedcyto init`, then `embedcyto datasets add NAME
    --layout LAYOUT --root DIR`): `embedcyto extract --model quilt`, `embedcyto probe
    --episodes 600`, `embedcyto lora`, `embedcyto status`, `embedcyto report`.
    """
    from embedcyto.workspace.current import use_workspace

    use_workspace(workspace)
    # A later library call in the same process (tests, notebooks) goes back to discovery.
    click.get_current_context().call_on_close(lambda: use_workspace(None))
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
