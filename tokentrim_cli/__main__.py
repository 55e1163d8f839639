"""The `tokentrim` command and `python -m tokentrim_cli` (what `accelerate launch -m` runs).

SIGTERM is turned into an exception before anything heavy is imported, so that it ends the command
like Ctrl-C does (temporary files removed, exit 143), and an interrupt during the imports exits 130
instead of printing a traceback.
"""

from __future__ import annotations

import signal
import sys

from .errors import Terminated, raise_terminated


def main() -> None:
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        from .cli import run

        run()
    except KeyboardInterrupt:  # only before a command's own handler is in place
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    except Terminated:
        sys.stderr.write("Terminated.\n")
        sys.exit(143)


if __name__ == "__main__":
    main()
