"""The ``poolx`` console script's entry point (and ``python -m poolx``'s).

``main`` hands the command line to ``poolx.harness.command``, which parses it
and runs ``poolx profile``, ``poolx bench``, ``poolx info`` or ``poolx demo``.
Nothing else lives here, on purpose: see ``main``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    # The harness is imported here, not at the top: the ``poolx`` console
    # script is the driver's main script, which spawn and forkserver children
    # import again (as spawn does), and they must not pay for the harness.
    from .harness import command

    return command.main(argv)


if __name__ == "__main__":
    sys.exit(main())
