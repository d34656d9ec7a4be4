"""`python -m gothic.dvc_run ARGS ...`: dvc ARGS, without the warnings every first run prints.

Before `dvc exp run` reproduces the pipeline it checks out the outputs dvc.lock records. A fresh
clone has no dvc.lock (a committed one would point at data no remote holds, and would differ with
every corpus), so DVC warns "No file hash info found for '...'. It won't be created." once for each
output, five times, about outputs the run is about to create. `make demo` runs DVC through this
module, which drops that message only; everything else DVC says is unchanged.
"""

from __future__ import annotations

import logging
import sys

# the dvc-data modules that log the message (their loggers are named after them)
CHECKOUT_LOGGERS = ("dvc_data.index.checkout", "dvc_data.hashfile.checkout")


def not_yet_created(record: logging.LogRecord) -> bool:
    """False for the warning about an output dvc.lock has no hash for yet (filtered out), True otherwise."""
    return not record.getMessage().startswith("No file hash info found for ")


def main(argv: list[str] | None = None) -> int:
    for name in CHECKOUT_LOGGERS:
        logging.getLogger(name).addFilter(not_yet_created)
    from dvc.cli import main as dvc_main

    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
