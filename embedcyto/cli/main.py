"""The ``embedcyto`` command group.

Sub-commands are imported lazily, so ``embedcyto --help`` is instant and never imports torch.
Library errors (:class:`embedcyto.errors.EmbedcytoError`) become one-line click errors, with the
library's parameter suggestions (`force=True`) rewritten as the command's own flags (--force).
A mistyped command gets a did-you-mean; Ctrl-C says what was kept and how to carry on.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import logging
import re

import click

from embedcyto.errors import PARAMETER, with_options

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

# What an interrupted command has kept, and how to carry on (printed instead of "Aborted!").
KEPT_ON_INTERRUPT = {
    "extract": "the rows written so far are kept in the partial store; the same command resumes "
               "from there",
    "probe": "result rows already written are kept; the same command skips them and runs the rest",
    "lora": "finished runs are kept; the same command skips them and retrains the interrupted one "
            "from its start",
    "demo": "rerun `embedcyto demo` to start the demo again",
}
INTERRUPTED_EXIT_CODE = 130  # the shell's convention for a SIGINT

# Library messages name a parameter to change as `name=value` (Python's spelling, right for a
# Python caller); the CLI rewrites each into the flag of the command that was run, or of the
# command the message names just before it (`embedcyto lora` and `rerun=True`).
NAMED_COMMAND = re.compile(rf"embedcyto ({'|'.join(COMMANDS)})\b(?: ([a-z][a-z-]*))?")
# Parameters a command has no flag for, but another flag of it decides: name -> (flag, wording)
# pairs, the first whose flag the command has is used.
STANDS_IN = {"split_dir": (("--dataset", "another --dataset NAME (each dataset name has its own "
                                         "split folder in the store)"),),
             "store_dir": (("--store", "--store DIR"),),
             # a folder to write: probe's saved probe (`fit_and_save`'s out_dir) or an output
             "out_dir": (("--out", "--out DIR"), ("--save-model", "--save-model DIR")),
             "name": (("--dataset", "--dataset NAME"),)}


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

    def resolve_command(self, ctx, args):
        """Like click's, plus a did-you-mean for a mistyped command name."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=2, cutoff=0.6)
            if close:
                options = " or ".join(f"'{c}'" for c in close)
                ctx.fail(f"No such command '{name}'. Did you mean {options}?")
        return super().resolve_command(ctx, args)


def _flag_table(command: click.Command) -> dict[str, tuple[str, click.Option]]:
    """Parameter name (and flag spelled as one) -> (long flag, option) of a command."""
    flags = {}
    for param in command.params:
        long = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        if isinstance(param, click.Option) and long:
            flags[param.name] = (long[0], param)
            flags[long[0][2:].replace("-", "_")] = (long[0], param)
    return flags


def _named_command(message: str, at: int) -> click.Command | None:
    """The command (or sub-command) named last before position ``at`` in its clause (a line,
    cut at "; " and ", or ": the next alternative is the command's own again)."""
    start = max(message.rfind(cut, 0, at) + len(cut) for cut in ("\n", "; ", ", or "))
    named = list(NAMED_COMMAND.finditer(message, start, at))
    if not named:
        return None
    command = cli.get_command(None, named[-1].group(1))
    sub = named[-1].group(2)
    if isinstance(command, click.Group) and sub in command.commands:
        return command.commands[sub]
    return command


def cli_wording(message: str, command: click.Command) -> str:
    """Rewrite the library's `name=value` suggestions as flags: those of the command named just
    before the suggestion in its clause (`embedcyto lora` ... `rerun=True` -> --rerun), else
    those of ``command``, the one that was run (and the group's own, such as --workspace)."""
    def option_for(name: str, value: str, at: int) -> str | None:
        other = _named_command(message, at)
        # the group's own options (--workspace) come before any command's
        flags = {**_flag_table(cli), **_flag_table(other if other is not None else command)}
        if name in flags:
            flag, param = flags[name]
            if param.is_flag:
                off = [o for o in param.secondary_opts if o.startswith("--")]
                return off[0] if value == "False" and off else flag
            return f"{flag} {value or name.upper()}"
        offered = {f for f, _ in flags.values()}
        return next((wording for flag, wording in STANDS_IN.get(name, ()) if flag in offered),
                    None)

    return with_options(message, option_for)


class _CliWording(logging.Filter):
    """Rewrites the `name=value` suggestions of log records emitted while a command runs."""

    def __init__(self, command: click.Command):
        super().__init__()
        self.command = command

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if PARAMETER.search(text):
            record.msg, record.args = cli_wording(text, self.command), None
        return True


def _interrupted(name: str) -> click.exceptions.Exit:
    kept = KEPT_ON_INTERRUPT.get(name, "work finished before the interruption is kept; run "
                                       "the same command again to continue")
    click.echo(f"\nInterrupted: {kept}.", err=True)
    return click.exceptions.Exit(INTERRUPTED_EXIT_CODE)


def _with_clean_errors(command: click.Command) -> click.Command:
    """Wrap a command (and its sub-commands) so library errors print without a traceback."""
    if getattr(command, "_embedcyto_wrapped", False):
        return command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_clean_errors(sub)
    if command.callback is not None:
        original = command.callback
        name = command.name

        @functools.wraps(original)
        def callback(*args, **kwargs):
            from embedcyto.errors import EmbedcytoError

            wording = _CliWording(command)
            handlers = list(logging.getLogger().handlers)
            for handler in handlers:
                handler.addFilter(wording)
            try:
                return original(*args, **kwargs)
            except EmbedcytoError as err:
                raise click.ClickException(cli_wording(str(err), command)) from err
            except KeyboardInterrupt:
                raise _interrupted(name) from None
            finally:
                for handler in handlers:
                    handler.removeFilter(wording)

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
