"""The chat REPL behind `gothic-chat` and `make chat`: talk to a checkpoint, token by token.

    gothic-chat --checkpoint models/best.pt --temp 0.8 --topk 40 --topp 0.9 --max 200
    gothic-chat                      # lists the checkpoints under models/ and asks which to load

Each line you type is a turn of the conversation (`gothic.chat.session` says how turns become a
prompt) or a slash command (`gothic.chat.commands`). A reply streams to the screen as it is
generated; a reply that would be empty is drawn again (MAX_DRAWS); when old turns are dropped to
fit the context, the user is told. A line starting with `//` is sent as text beginning with one `/`.

Boundaries. All sampling is `gothic.generation.Engine`'s and all state is the session's; this
module streams replies and runs the loop, and shows everything through `gothic.chat.view`.
Everything the loop touches is injectable: `run_chat(session, console, read_line)` takes any rich
`Console` and a `read_line(prompt) -> str` that raises EOFError at the end of input, which is how
the tests drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from gothic.chat.commands import EndSession, parse_command, run_command
from gothic.chat.session import (
    ChatSession,
    CommandError,
    ReplyStats,
    no_checkpoint_message,
    resolve_checkpoint,
    settings_problems,
)
from gothic.chat.view import Typewriter, display_path, header, models_table, note, render
from gothic.checkpoint import find_checkpoints
from gothic.config import SamplingSettings, seed_problem
from gothic.errors import GothicError
from gothic.generation import Engine, TextStream, repair_text
from gothic.runtime import ctrl_c_interrupts

PROMPT = "you › "
MAX_DRAWS = 3
"""An empty reply (the model ends its turn at once, common for lightly trained models) is drawn
again with the next seed, up to this many draws in all, before the user is told."""


# ---------------------------------------------------------------------------------------------
# streaming a reply


def type_out(stream: TextStream, console: Console, started: float) -> float | None:
    """Print a stream as it comes; Ctrl+C closes it. Returns seconds from `started` to the first
    visible text (None if there was none)."""
    typewriter, first_text_s = Typewriter(console), None
    try:
        for piece in stream:
            if first_text_s is None and not piece.isspace():
                first_text_s = time.perf_counter() - started
            typewriter.write(piece)
    except KeyboardInterrupt:
        stream.close()
    typewriter.close()
    return first_text_s


def stream_reply(session: ChatSession, console: Console, user_text: str) -> ReplyStats:
    """Generate and print one reply; Ctrl+C stops it and the session goes on."""
    started = time.perf_counter()
    if dropped := session.add_user_turn(user_text):
        note(console, f"(the conversation outgrew the {session.engine.block_size}-token context: "
                      f"forgot the {dropped} oldest turn{'s' if dropped > 1 else ''})", "warn")
    for draw in range(MAX_DRAWS):
        stream = session.open_reply()
        if stream.notice and draw == 0:
            note(console, f"({stream.notice})", "warn")
        first_text_s = type_out(stream, console, started)
        if stream.text.strip() or stream.finish_reason in ("closed", "length"):
            break
    stats = ReplyStats(len(stream.token_ids), first_text_s, time.perf_counter() - started, stream.finish_reason)
    text = session.finish_reply(stream, stats)
    if stream.finish_reason == "closed":
        note(console, "(stopped)")
    elif not text:
        note(console, "(the model ended its turn without a word: try again, /temp higher, or /reset)")
    elif stream.finish_reason == "length":
        note(console, f"(cut at the {session.settings.max_new_tokens}-token limit: /max raises it)")
    return stats


# ---------------------------------------------------------------------------------------------
# the loop


def handle_line(session: ChatSession, console: Console, line: str) -> bool:
    """Act on one input line; False when the session should end."""
    line, repaired = repair_text(line.strip())
    if repaired:  # a Latin-1 terminal or file: tokenizer, screen and /save all need real characters
        note(console, "(that line was not valid UTF-8: its stray bytes were read as Latin-1)", "warn")
    if not line:
        return True
    parsed = parse_command(line)
    if parsed is None:
        stream_reply(session, console, line[1:] if line.startswith("//") else line)
        return True
    try:
        render(console, run_command(session, *parsed))
    except CommandError as e:
        note(console, str(e), "error")
    except EndSession:
        return False
    return True


def run_chat(session: ChatSession, console: Console, read_line: Callable[[str], str]) -> None:
    """The REPL: header, then read a line, act, repeat until /quit, Ctrl+D or Ctrl+C at the prompt.

    Args:
        session: the model and conversation.
        console: where everything is printed.
        read_line: shows the prompt and returns one line; raises EOFError at the end of input
            (Ctrl+D) and KeyboardInterrupt for Ctrl+C.
    """
    console.print(header(session))
    while True:
        try:
            line = read_line(PROMPT)
        except (EOFError, KeyboardInterrupt):
            console.print()  # the cursor still sits after the prompt
            break
        try:
            if not handle_line(session, console, line):
                break
        except KeyboardInterrupt:  # Ctrl+C while a command (say, loading a model) runs
            note(console, "(cancelled)")
    note(console, "farewell.")


def terminal_reader(console: Console) -> Callable[[str], str]:
    """read_line for a real terminal: builtin input() with readline's editing and history."""
    try:
        import readline  # noqa: F401  (importing it gives input() line editing and history)
    except ImportError:  # Windows
        pass
    colour = console.is_terminal and not console.no_color

    def read_line(prompt: str) -> str:
        if colour:
            # \001 and \002 tell readline the escape codes take no room, so editing stays aligned
            prompt = f"\001\033[1;35m\002{prompt}\001\033[0m\002"
        return input(prompt)

    return read_line


def choose_checkpoint(models_dir: Path, console: Console, read_line: Callable[[str], str]) -> Path | None:
    """List the checkpoints under models_dir and ask which to load; None if the user leaves."""
    found = find_checkpoints(models_dir)
    if not found:
        raise GothicError(no_checkpoint_message(models_dir))
    console.print(models_table(models_dir))
    while True:
        try:
            answer = read_line(f"load which checkpoint? [1 = {display_path(found[0], models_dir)}] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return None
        if not answer:
            return found[0]
        try:
            return resolve_checkpoint(answer, models_dir)
        except CommandError as e:
            note(console, str(e), "error")


def start_chat(checkpoint: Path | None, tokenizer: Path | None, models_dir: Path, settings: SamplingSettings,
               seed: int | None = None, device: str = "auto", dtype: str = "auto", logs_dir: Path = Path("logs"),
               console: Console | None = None, read_line: Callable[[str], str] | None = None) -> None:
    """What `gothic-chat` runs: pick and load a checkpoint, then the REPL.

    Raises GothicError (shown as one line by run_main) for bad settings or a missing model.
    """
    if problems := settings_problems(settings):
        raise GothicError("; ".join(problems))
    if problem := seed_problem(seed, "--seed"):
        raise GothicError(problem)
    ctrl_c_interrupts()
    console = console or Console()
    read_line = read_line or terminal_reader(console)
    if checkpoint is None:
        checkpoint = choose_checkpoint(models_dir, console, read_line)
        if checkpoint is None:
            return
    elif not checkpoint.is_file():
        raise GothicError(no_checkpoint_message(models_dir, checkpoint))
    with console.status(f"loading {checkpoint} ..."):
        engine = Engine.from_checkpoint(checkpoint, tokenizer, device, dtype)
    session = ChatSession(engine, checkpoint, tokenizer, models_dir=models_dir, logs_dir=logs_dir, device=device,
                          dtype=dtype, settings=settings, next_seed=seed)
    run_chat(session, console, read_line)
