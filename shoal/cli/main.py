"""`shoal` entry point and the one top-level error handler."""

from __future__ import annotations

import logging
import sys

import click
from rich.console import Console

from shoal import __version__
from shoal.errors import ShoalError

err_console = Console(stderr=True, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    # Imported here so `shoal --help` stays fast and each subsystem owns its commands.
    from shoal.cli import cluster, dist, image, model, state, study

    cli.add_command(cluster.cluster)
    cli.add_command(image.image)
    cli.add_command(dist.dist)
    cli.add_command(dist.run_cmd)
    cli.add_command(study.study)
    cli.add_command(model.model)
    cli.add_command(state.state)


def main(argv: list[str] | None = None) -> int:
    _register()
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
