"""The chat REPL behind `gothic-chat` and `make chat`: talk to a checkpoint, token by token.

    gothic-chat --checkpoint models/best.pt --temp 0.8 --topk 40 --topp 0.9 --max 200
    gothic-chat                      # lists the checkpoints under models/ and asks which to load

Conversation format. The model is a plain language model trained on books and plays, not an
instruction model, so a conversation is simply a document of paragraphs: every turn (yours, then
the model's) is one paragraph, and paragraphs are separated by a blank line. The prompt for a
reply is `<|endoftext|>` (a document start, as in the training bins) followed by

    turn 1 + "\\n\\n" + turn 2 + "\\n\\n" + ... + your new turn + "\\n\\n"

and the reply is the model's next paragraph: generation stops at the first blank line (the stop
string "\\n\\n"), at `<|endoftext|>`, or after `/max` tokens; a reply that would be empty is drawn
again (MAX_DRAWS). With the plays this reads like a dialogue (the model often answers as the next
speaker); with novels, like the next paragraph.

When the prompt would leave less than a quarter of the context window (or `/max` tokens, if
fewer) for the reply, the oldest turns are dropped, whole, and the user is told. A line starting
with `//` is sent as text beginning with one `/`.

Boundaries. All sampling is `gothic.generation.Engine`'s; this module owns the session (the model,
settings and conversation, with no I/O of its own), builds prompts, streams replies and runs the
loop. The slash commands live in `gothic.chat_commands`, everything shown on screen in
`gothic.chat_view`. Everything the loop touches is injectable: `run_chat(session, console,
read_line)` takes any rich `Console` and a `read_line(prompt) -> str` that raises EOFError at the
end of input, which is how the tests drive it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import Console

from gothic.chat_commands import MAX_SEED, CommandError, EndSession, parse_command, run_command
from gothic.chat_view import Typewriter, display_path, header, models_table, no_checkpoint_message, note, render
from gothic.checkpoint import CHECKPOINT_NAMES, find_checkpoints
from gothic.errors import GothicError
from gothic.generation import Engine, SamplingSettings, TextStream, repair_text
from gothic.runtime import ctrl_c_interrupts

TURN_SEPARATOR = "\n\n"
STOP_STRINGS = ("\n\n",)
"""A blank line ends a paragraph, and so the model's turn."""
PROMPT = "you › "
MAX_DRAWS = 3
"""An empty reply (the model ends its turn at once, common for lightly trained models) is drawn
again with the next seed, up to this many draws in all, before the user is told."""
MIN_TEMPERATURE = 1e-3
"""Below this (but above 0) a temperature is greedy in all but name (the engine then keeps only
the top token), so the chat asks for the honest spelling, 0."""
MIN_TOP_P = 1e-3
"""A top-p this small keeps only the likeliest token (the engine always keeps it); /topk 1 says
that plainly, so the chat asks for it instead."""


@dataclass(frozen=True)
class Turn:
    """One entry of the transcript: who spoke ('you', a model's name, or 'note') and what."""

    speaker: str
    text: str
    stopped: bool = False
    """The reply was cut short with Ctrl+C."""


@dataclass(frozen=True)
class ReplyStats:
    tokens: int
    first_token_s: float | None
    """Seconds from Enter to the first visible streamed text (None if there was none)."""
    total_s: float
    finish_reason: str | None


# ---------------------------------------------------------------------------------------------
# checkpoints: which file a name means, and loading one


def resolve_checkpoint(name: str, models_dir: Path) -> Path:
    """best | latest | final | a row number of /models | a path (as given, or under models_dir)."""
    found = find_checkpoints(models_dir)
    if name.isdecimal():
        index = int(name)
        if 1 <= index <= len(found):
            return found[index - 1]
        raise CommandError(f"there is no checkpoint number {name}; /models lists {len(found)}")
    candidates = [Path(name), models_dir / name, models_dir / f"{name}.pt"]
    if name in CHECKPOINT_NAMES:  # 'best' means models/best.pt even if a file ./best happens to exist
        candidates.insert(0, candidates.pop())
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate
        except (OSError, ValueError):  # a name the OS cannot represent (NUL byte, too long)
            break
    raise CommandError(f"no checkpoint {name!r}: use best, latest, final, a number from /models, or a path")


def settings_problems(settings: SamplingSettings) -> list[str]:
    """The engine's checks, plus the chat's floors on temperature and top-p (see MIN_TEMPERATURE)."""
    problems = settings.problems()
    if 0 < settings.temperature < MIN_TEMPERATURE:
        problems.append(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {settings.temperature:g}")
    if 0 < settings.top_p < MIN_TOP_P:
        problems.append(f"top-p must be at least {MIN_TOP_P:g} (/topk 1 keeps only the likeliest token), "
                        f"got {settings.top_p:g}")
    return problems


# ---------------------------------------------------------------------------------------------
# the session: model, settings and conversation, with no I/O of its own


@dataclass
class ChatSession:
    """Everything a chat remembers. Methods change state and return data; nothing prints."""

    engine: Engine
    checkpoint_path: Path
    tokenizer_path: Path | None
    """A tokenizer.json every model is checked against; None: each checkpoint's own."""
    models_dir: Path = Path("models")
    logs_dir: Path = Path("logs")
    device: str = "auto"
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    next_seed: int | None = None
    """Seed of the next reply (then +1 per reply), or None for a fresh random seed each time."""
    context: list[str] = field(default_factory=list)
    """The turns the model still sees, oldest first."""
    transcript: list[Turn] = field(default_factory=list)
    """Everything said this session (for /save), including turns trimmed from the context."""
    last_reply: ReplyStats | None = None
    started: datetime = field(default_factory=datetime.now)

    @property
    def model_name(self) -> str:
        return self.checkpoint_path.name

    def settings_line(self) -> str:
        s = self.settings
        seed = "random" if self.next_seed is None else str(self.next_seed)
        return f"temp {s.temperature:g} · top-k {s.top_k} · top-p {s.top_p:g} · max {s.max_new_tokens} · seed {seed}"

    def update_settings(self, **changes) -> None:
        """Apply new sampling values, or raise CommandError with the engine's own complaint."""
        candidate = dataclasses.replace(self.settings, **changes)
        if problems := settings_problems(candidate):
            raise CommandError(problems[0])
        self.settings = candidate

    # -- models ------------------------------------------------------------------------------

    def switch_model(self, name: str) -> Path:
        """Load another checkpoint; on any failure the current model stays."""
        path = resolve_checkpoint(name, self.models_dir)
        try:
            engine = Engine.from_checkpoint(path, self.tokenizer_path, self.device)
        except GothicError as e:
            raise CommandError(str(e)) from None
        self.engine, self.checkpoint_path = engine, path
        self.transcript.append(Turn("note", f"switched to {path}"))
        return path

    # -- conversation ------------------------------------------------------------------------

    def reset(self) -> int:
        """Forget the conversation; return how many turns were forgotten."""
        forgotten = len(self.context)
        self.context.clear()
        self.transcript.append(Turn("note", "conversation reset"))
        return forgotten

    def prompt_budget(self) -> int:
        """Tokens the prompt may take: the context window less room for the reply.

        A reply that outgrows the room still works (the engine slides its window), but keeping
        room means the model sees the whole kept conversation for most of its reply.
        """
        block_size = self.engine.block_size
        room = min(self.settings.max_new_tokens, block_size // 4)
        return max(1, block_size - room)

    def prompt_ids(self) -> list[int]:
        text = TURN_SEPARATOR.join(self.context) + TURN_SEPARATOR
        return [self.engine.eot] + self.engine.tokenizer.encode(text, add_special_tokens=False).ids

    def trim_context(self) -> int:
        """Drop the oldest turns until the prompt fits the budget; return how many went.

        The newest turn always stays: if it alone is too long, the engine keeps its end and says so.
        """
        budget, dropped = self.prompt_budget(), 0
        while len(self.context) > 1 and len(self.prompt_ids()) > budget:
            self.context.pop(0)
            dropped += 1
        return dropped

    def add_user_turn(self, user_text: str) -> int:
        """Add the user's turn to the conversation; return how many old turns were trimmed."""
        self.context.append(user_text)
        self.transcript.append(Turn("you", user_text))
        return self.trim_context()

    def open_reply(self) -> TextStream:
        """Start the model's next turn (a stream of text pieces), using and advancing the seed."""
        seed = self.next_seed
        if seed is not None:
            self.next_seed = seed + 1
        try:
            return self.engine.stream(self.prompt_ids(), self.settings, seed=seed, stop=STOP_STRINGS)
        except GothicError as e:  # settings are validated on entry, so this is unexpected but friendly
            raise CommandError(str(e)) from None

    def finish_reply(self, stream: TextStream, stats: ReplyStats) -> str:
        """Record what the model said (a stopped reply too: the user saw it); return the text."""
        text = stream.text.strip()
        self.last_reply = stats
        if text:
            self.context.append(text)
            self.transcript.append(Turn(self.model_name, text, stopped=stream.finish_reason == "closed"))
        return text


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
               seed: int | None = None, device: str = "auto", logs_dir: Path = Path("logs"),
               console: Console | None = None, read_line: Callable[[str], str] | None = None) -> None:
    """What `gothic-chat` runs: pick and load a checkpoint, then the REPL.

    Raises GothicError (shown as one line by run_main) for bad settings or a missing model.
    """
    if problems := settings_problems(settings):
        raise GothicError("; ".join(problems))
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise GothicError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
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
        engine = Engine.from_checkpoint(checkpoint, tokenizer, device)
    session = ChatSession(engine, checkpoint, tokenizer, models_dir=models_dir, logs_dir=logs_dir, device=device,
                          settings=settings, next_seed=seed)
    run_chat(session, console, read_line)
