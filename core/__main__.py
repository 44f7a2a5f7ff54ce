"""Entry point of launcher child processes: ``python -m core worker|master -``.

The options come on stdin (see ``core.spawn.start_child``), never on the command line.
"""

from __future__ import annotations

import logging
import sys


def _main(argv: list[str]) -> int:
    if argv not in (["worker", "-"], ["master", "-"]):
        sys.stderr.write("usage: python -m core worker|master - (started by the launcher)\n")
        return 2
    from core.spawn import read_options

    options = read_options(sys.stdin.buffer)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if argv[0] == "worker":
        from core.worker import main as worker_main

        worker_main(options)
    else:
        from core.relay import main as relay_main

        relay_main(options)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
