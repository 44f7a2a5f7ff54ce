"""A researcher's ensemble server: laminar flame speeds, as a Python function and as a command.

Run it (streamable HTTP on http://127.0.0.1:9276/mcp)::

    python examples/agents/server.py            # or: --port 0 --transport stdio

One call of ``flame_speed`` with ``pressure=[1, 2, 5, 10]`` and ``temperature=300`` runs four
tasks on the server's warm launcher and returns four results.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Annotated

from pydantic import Field

from ensemble_mcp import Server

server = Server("combustion", port=9276)


@server.ensemble_tool
def flame_speed(pressure: float, temperature: float) -> float:
    """Laminar flame speed of a stoichiometric methane-air flame, in m/s.

    A power-law fit around 1 atm and 298 K: S = 0.38 (T/298)^1.77 (P/1 atm)^-0.5.

    Args:
        pressure: pressure of the unburned gas in atm (> 0).
        temperature: temperature of the unburned gas in K (> 0).
    """
    if pressure <= 0 or temperature <= 0:
        raise ValueError(f"pressure and temperature must be > 0, got {pressure}, {temperature}")
    return round(0.38 * (temperature / 298.0) ** 1.77 * pressure**-0.5, 4)


# The same model as an external program: each value is one argv element, no shell involved.
_PROGRAM = (
    "import sys; p, t = map(float, sys.argv[1:]); "
    "print(round(0.38 * (t / 298.0) ** 1.77 * p ** -0.5, 4))"
)
server.ensemble_tool(
    f"{shlex.quote(sys.executable)} -c {shlex.quote(_PROGRAM)} {{pressure}} {{temperature}}",
    name="flame_speed_cli",
    description="Runs the flame-speed program once per point; its output is the speed in m/s.",
    params={
        "pressure": Annotated[float, Field(gt=0, description="pressure in atm")],
        "temperature": Annotated[float, Field(gt=0, description="temperature in K")],
    },
)


def main() -> None:
    """Serve the tools; ``--transport stdio`` for clients that start the server themselves."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--transport", choices=("streamable-http", "stdio"), default="streamable-http"
    )
    parser.add_argument("--host", default=server.host)
    parser.add_argument("--port", type=int, default=server.port)
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
