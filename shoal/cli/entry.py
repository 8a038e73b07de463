"""The `shoal` console script: a stdlib-only first step, so that Ctrl-C while the CLI's modules
load (click, rich, the subsystems) prints one line and exits 130 instead of a traceback."""

import sys


def main() -> int:
    try:
        from shoal.cli.main import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
