"""The ``isofeat`` command's entry point.

A warm ``isofeat init`` (devcontainer.json's initializeCommand, on every open) is answered
here from its stamp when nothing changed (:mod:`isofeat.quickinit`), before argparse and the
rest of the CLI are imported. Everything else goes to :func:`isofeat.cli.main`.
"""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:] == ["init"]:
        from isofeat.quickinit import unchanged_since_last_open

        said = unchanged_since_last_open()
        if said is not None:
            sys.stderr.write(said + "\n")
            return 0
    from isofeat.cli import main as cli_main

    return cli_main()
