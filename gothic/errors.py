"""User-facing errors and the one place that turns them into a one-line message and an exit code.

Library code raises `GothicError` (or a subclass) with a message that says what is wrong and how
to fix it. Entry points (stages, console scripts) wrap their `main` in `run_main`, which prints
that message on one line of stderr and exits 2: no traceback for a user mistake.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable

MACHINE_REFUSALS = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EDQUOT: "free some space within your disk quota and run again",
    errno.EFBIG: "the file is larger than this filesystem or ulimit -f allows",
    errno.EROFS: "the filesystem is read-only: choose another folder",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
}
"""The one table of OSErrors where the machine says no (exit 1), with what to do about each: what a
failed write says (gothic.files.write_error) and what run_main shows of one met anywhere else."""


# What a terminal acts on instead of showing: C0 and C1 controls (ESC starts the escape sequences that
# recolour, retitle or clear a terminal), the bidirectional overrides and isolates (they reorder what
# follows them), and the lone surrogates that stand for a file name's bytes that are not UTF-8.
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match) -> str:
    ch = match.group()
    if "\udc80" <= ch <= "\udcff":  # os.fsdecode's stand-in for the byte 0x80-0xff of a name
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")


def first_line(e: BaseException) -> str:
    """An exception's first line of message (its type name when it has none): what a one-line error quotes
    of a library's exception, whose message may run to paragraphs."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def printable(text: object) -> str:
    """text as one safe line for a terminal: every character it would act on written as its escape,
    as repr writes it (a file named "a\x1b[2J.txt" shows as a\\x1b[2J.txt, a newline as \\n).

    The one owner of that rule: every message that can carry a user's file name passes through it on
    its way out (run_main, the stages' and CLIs' lines, the training log, the chat's notes)."""
    return UNPRINTABLE.sub(_escaped, str(text))


class GothicError(Exception):
    """A problem the user can fix; str() is the complete message."""

    exit_code = 2
    """2: a usage or input mistake (argparse's code too); subclasses for the machine's refusals use 1."""


def run_main(main: Callable[[], object], prog: str) -> None:
    """Run an entry point; user errors and Ctrl+C become a short message and a non-zero exit."""
    try:
        code = main()
    except GothicError as e:  # gothic.config.ConfigError included
        print(f"{prog}: error: {printable(e)}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`gothic-generate ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        sys.exit(128 + 13)  # what a tool killed by SIGPIPE reports
    except OSError as e:
        if e.errno not in MACHINE_REFUSALS:
            raise  # a bug or an unforeseen case: the traceback is what a report needs
        where = f"{e.filename}: " if e.filename else ""
        print(printable(f"{prog}: error: {where}{e.strerror} ({MACHINE_REFUSALS[e.errno]})"), file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
