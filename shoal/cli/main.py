"""`shoal` entry point and the one top-level error handler."""

from __future__ import annotations

import importlib
import logging
import sys

import click
from rich.console import Console

from shoal import __version__
from shoal.errors import ShoalError

err_console = Console(stderr=True, highlight=False)


# command -> (module, attribute): each subsystem's commands are imported only when used. The
# study commands pull in matplotlib and the model commands scipy: importing every module for
# every command cost `shoal cluster status` 3-7 s before it did anything.
COMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("shoal.cli.cluster", "cluster"),
    "image": ("shoal.cli.image", "image"),
    "dist": ("shoal.cli.dist", "dist"),
    "run": ("shoal.cli.dist", "run_cmd"),
    "study": ("shoal.cli.study", "study"),
    "model": ("shoal.cli.model", "model"),
    "state": ("shoal.cli.state", "state"),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, attr = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Log every command run and show tracebacks.")
@click.version_option(__version__, prog_name="shoal")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """shoal: HPC services and jobs in containers, and fast image distribution."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    """Import every command now (tests walk cli.commands); `shoal` itself imports on use."""
    ctx = click.Context(cli)
    for name in COMMANDS:
        cli.get_command(ctx, name)


def main(argv: list[str] | None = None) -> int:
    from shoal.cli.options import set_json_mode

    set_json_mode(False)
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        # a command's own exit status (`shoal run` passes the container command's through)
        rv = cli.main(args=argv, prog_name="shoal", standalone_mode=False)
    except ShoalError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
        if exc.hint:
            err_console.print(f"[yellow]hint:[/] {exc.hint}", soft_wrap=True)
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
