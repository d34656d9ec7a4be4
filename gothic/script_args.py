"""The argument parser the console scripts share (gothic.cli, gothic.cli_export): light to import, so
`--help`, `--version` and usage errors answer before torch loads."""

from __future__ import annotations

import argparse

from gothic import __version__


class HelpFormatter(argparse.HelpFormatter):
    """Appends `(default: X)` where a default says something: never for None, False, empty or a
    suppressed flag, and lists read as they would be typed (`a b`, not `[PosixPath('a'), ...]`)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if (action.required or default in (None, False, "", []) or default is argparse.SUPPRESS
                or "default:" in text or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown})"


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        """A usage mistake is one line, like every other error (argparse adds a usage block)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def script_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser every gothic-* script starts from: defaults in the help, --version, one-line usage errors."""
    parser = OneLineErrorParser(prog=prog, description=description, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser
