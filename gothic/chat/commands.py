"""The chat's slash commands: parsing a line, the handlers, and the one registry, `COMMANDS`.

Each handler is `(session, arg) -> Result`: it changes the session through its methods and
returns data (a `Note` or a rich table) that `gothic.chat.view.render` prints, or raises
`CommandError` for a friendly one-line complaint. The sampling knobs (/temp, /topk, /topp, /max)
are rows of one table, `SETTINGS`, served by one show-or-set handler; `/help` is generated from
the registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from gothic.chat.session import ChatSession, CommandError
from gothic.chat.view import Note, Result, help_table, models_table, params_table, transcript_markdown
from gothic.config import SAMPLING_LABELS
from gothic.errors import GothicError
from gothic.files import write_text


class EndSession(Exception):
    """Raised by /quit to leave the loop."""


# ---------------------------------------------------------------------------------------------
# parsing, handlers, registry


def parse_command(line: str) -> tuple[str, str] | None:
    """'/temp 0.8' -> ('temp', '0.8'); None for text meant for the model (including '//...')."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    name, _, arg = line[1:].strip().partition(" ")
    name, _, more = name.partition("\t")  # a tab separates the argument as well as a space does
    return name.lower(), f"{more} {arg}".strip()


def parse_float(arg: str, what: str) -> float:
    try:
        return float(arg)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {arg!r}") from None


def parse_int(arg: str, what: str) -> int:
    try:
        return int(arg)
    except ValueError:
        raise CommandError(f"{what} must be a whole number, got {arg!r}") from None


@dataclass(frozen=True)
class Setting:
    """A sampling knob as a command: `/temp` shows it, `/temp 0.8` sets it (the session checks the value)."""

    name: str
    """The command, without its slash."""
    field: str
    """The SamplingSettings field."""
    kind: type[int] | type[float]
    """How the argument is read, and the value shown."""
    summary: str
    off: float | None = None
    """The value that turns the knob off, if any (said when it is set)."""
    shown: str = "{label} is {value}"
    changed: str = "{label} set to {value}"

    @property
    def label(self) -> str:
        """How messages name it: as the settings' own checks do, so both kinds of complaint agree."""
        return SAMPLING_LABELS[self.field]

    def parse(self, arg: str) -> int | float:
        return parse_int(arg, self.label) if self.kind is int else parse_float(arg, self.label)

    def text(self, value: int | float) -> str:
        return str(value) if self.kind is int else f"{value:g}"

    def command(self) -> Command:
        usage = f"/{self.name} {'N' if self.kind is int else 'F'}"
        return Command(self.name, usage, self.summary, partial(show_or_set, self))


SETTINGS = (
    Setting("temp", "temperature", float, "sampling temperature: 0 is greedy, higher is wilder (e.g. /temp 0.8)"),
    Setting("topk", "top_k", int, "sample only from the N likeliest tokens; 0 turns top-k off", off=0),
    Setting("topp", "top_p", float, "sample from the likeliest tokens up to probability F, in (0, 1]; 1 is off",
            off=1),
    Setting("max", "max_new_tokens", int, "longest reply, in tokens", shown="replies stop after {value} tokens",
            changed="replies now stop after {value} tokens"),
)


def show_or_set(setting: Setting, session: ChatSession, arg: str) -> Result:
    """The one handler of every SETTINGS row."""
    if not arg:
        value = getattr(session.settings, setting.field)
        return Note(setting.shown.format(label=setting.label, value=setting.text(value)), "info")
    session.update_settings(**{setting.field: setting.parse(arg)})
    value = getattr(session.settings, setting.field)
    off = " (off)" if setting.off is not None and value == setting.off else ""
    return Note(setting.changed.format(label=setting.label, value=setting.text(value)) + off)


def cmd_seed(session: ChatSession, arg: str) -> Result:
    if not arg:
        state = "random" if session.next_seed is None else f"{session.next_seed} for the next reply"
        return Note(f"seed is {state}", "info")
    if arg.lower() in ("random", "off", "none"):
        session.set_seed(None)
        return Note("seed is random: every reply differs")
    seed = parse_int(arg, "seed")
    session.set_seed(seed)
    return Note(f"seed set to {seed}: the next replies use {seed}, {seed + 1}, ... and can be reproduced")


def cmd_model(session: ChatSession, arg: str) -> Result:
    if not arg:
        return Note(f"talking to {session.checkpoint_path}", "info")
    path = session.switch_model(arg)
    info = session.engine.checkpoint_info
    loss = info.weights_val_loss
    detail = f"step {info.step}" + (f", val loss {loss:.4f}" if loss is not None else "")
    return Note(f"now talking to {path} ({detail}); the conversation carries over (/reset forgets it)")


def cmd_models(session: ChatSession, arg: str) -> Result:
    _no_argument(arg)
    return models_table(session.models_dir, session.checkpoint_path)


def cmd_reset(session: ChatSession, arg: str) -> Result:
    _no_argument(arg)
    forgotten = session.reset()
    return Note(f"conversation reset ({forgotten} turns forgotten)")


def cmd_params(session: ChatSession, arg: str) -> Result:
    _no_argument(arg)
    return params_table(session)


def cmd_save(session: ChatSession, arg: str) -> Result:
    now = datetime.now()
    try:
        path = transcript_path(session.logs_dir, arg, now)
        write_text(path, transcript_markdown(session, now))
    except (OSError, ValueError, GothicError) as e:  # a bad name, a full disk, a folder in the way
        raise CommandError(f"cannot save there: {_reason(e)}") from None
    return Note(f"saved the transcript to {path}")


def cmd_help(session: ChatSession, arg: str) -> Result:
    if arg:
        command = find_command(arg.lstrip("/"))
        if command is None:
            raise CommandError(unknown_command_message(arg.lstrip("/")))
        return Note(f"{command.usage}  {command.summary}", "info")
    return help_table(help_rows())


def cmd_quit(session: ChatSession, arg: str) -> Result:
    raise EndSession


def _no_argument(arg: str) -> None:
    if arg:
        raise CommandError(f"takes no argument, got {arg!r}")


def _reason(e: BaseException) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    summary: str
    handler: Callable[[ChatSession, str], Result]
    aliases: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {c.name: c for c in (
    *(setting.command() for setting in SETTINGS),
    Command("seed", "/seed N", "reproducible replies (seeds N, N+1, ...); /seed random undoes it", cmd_seed),
    Command("model", "/model NAME", "switch model: best, latest, final, a number from /models, or a path",
            cmd_model),
    Command("models", "/models", "list the checkpoints under the models folder", cmd_models),
    Command("reset", "/reset", "forget the conversation and start afresh", cmd_reset),
    Command("params", "/params", "model and sampling details", cmd_params),
    Command("save", "/save [FILE]", "write the transcript as markdown under logs/", cmd_save),
    Command("help", "/help [COMMAND]", "this list, or one command's usage", cmd_help, ("?",)),
    Command("quit", "/quit", "leave (Ctrl+D does too)", cmd_quit, ("exit", "q")),
)}
_ALIASES = {alias: c.name for c in COMMANDS.values() for alias in c.aliases}


def help_rows() -> list[tuple[str, str]]:
    """(usage, summary) of every command, in registry order: what /help shows."""
    return [(c.usage, c.summary) for c in COMMANDS.values()]


def find_command(name: str) -> Command | None:
    return COMMANDS.get(_ALIASES.get(name.lower(), name.lower()))


def unknown_command_message(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(COMMANDS), n=1)
    hint = f"did you mean /{close[0]}? " if close else ""
    return f"unknown command /{name}: {hint}/help lists them"


def run_command(session: ChatSession, name: str, arg: str) -> Result:
    """Run one slash command; a bad name or value raises CommandError with the usage line."""
    command = find_command(name)
    if command is None:
        raise CommandError(unknown_command_message(name))
    try:
        return command.handler(session, arg)
    except CommandError as e:
        raise CommandError(f"/{command.name}: {e} (usage: {command.usage})") from None


# ---------------------------------------------------------------------------------------------
# where /save writes


def transcript_path(logs_dir: Path, arg: str, now: datetime) -> Path:
    """logs/chat-YYYYmmdd-HHMMSS.md, or the name given (kept under logs/, .md added if bare)."""
    if not arg:
        path = logs_dir / f"chat-{now:%Y%m%d-%H%M%S}.md"
        n = 2
        while path.exists():
            path = logs_dir / f"chat-{now:%Y%m%d-%H%M%S}-{n}.md"
            n += 1
        return path
    relative = Path(arg)
    if relative.is_absolute() or ".." in relative.parts or not relative.name:
        raise CommandError(f"give a file name inside {logs_dir}/, e.g. /save ghost-story.md")
    if not relative.suffix:
        relative = relative.with_name(relative.name + ".md")
    return logs_dir / relative
