#!/usr/bin/python3
"""Wait until HOST:PORT accepts connections, then exec the command ("none": exec at once).

    wait_then_exec.py HOST:PORT -- COMMAND [ARG...]

supervisord has no dependencies between programs, and slurmctld exits when slurmdbd is not up yet
(slurmdbd likewise without MariaDB). Runs with the host's /usr/bin/python3 on the controller.
"""

import os
import socket
import sys
import time


def main(argv: "list[str]") -> None:
    target, sep, *cmd = argv
    if sep != "--" or not cmd:
        sys.exit("usage: wait_then_exec.py HOST:PORT -- COMMAND [ARG...]")
    if target != "none":
        host, _, port = target.rpartition(":")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
