"""Entry point of launcher child processes: ``python -m core worker|master <options file>``."""

from __future__ import annotations

import logging
import sys


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("worker", "master"):
        sys.stderr.write(
            "usage: python -m core worker|master OPTIONS_FILE (started by the launcher)\n"
        )
        return 2
    from core.spawn import load_options

    options = load_options(argv[1])
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if argv[0] == "worker":
        from core.worker import main
    else:
        from core.master import main  # type: ignore[assignment]
    main(options)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
