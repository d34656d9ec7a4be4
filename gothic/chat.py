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

Boundaries. All sampling is `gothic.generation.Engine`'s; this module only builds prompts, keeps
the conversation and renders. Model text is printed as `rich.text.Text`, never parsed as markup,
so a generated `[bold]` or `[/]` prints literally. Everything the loop touches is injectable:
`run_chat(session, console, read_line)` takes any rich `Console` and a `read_line(prompt) -> str`
that raises EOFError at the end of input, which is how the tests drive it.

Slash commands live in one registry, `COMMANDS`: each handler is `(session, arg) -> Result`,
returning data (a `Note` or a rich table) that `render` prints, or raising `CommandError` for a
friendly one-line complaint; `/help` is generated from the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import pickle
import re
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gothic.errors import GothicError
from gothic.files import write_text
from gothic.generation import Engine, SamplingSettings, TextStream

TURN_SEPARATOR = "\n\n"
STOP_STRINGS = ("\n\n",)
"""A blank line ends a paragraph, and so the model's turn."""
CHECKPOINT_NAMES = ("best", "latest", "final")
PROMPT = "you › "
REPLY_INDENT = "  "
MAX_WRAP = 100
"""Replies wrap at the console width, but no wider than this, for readable lines."""
MAX_SEED = 2**32 - 1
MAX_DRAWS = 3
"""An empty reply (the model ends its turn at once, common for lightly trained models) is drawn
again with the next seed, up to this many draws in all, before the user is told."""
MIN_TEMPERATURE = 1e-3
"""Below this (but above 0) logits / temperature can overflow to inf and the engine's draw fails;
such a temperature is greedy in all but name, so the chat asks for 0 instead."""
MIN_TOP_P = 1e-3
"""A top-p below float32's range rounds to 0, which filters out every token; /topk 1 is the way
to keep only the likeliest."""

STYLES = {
    "info": "dim",
    "ok": "green",
    "warn": "yellow",
    "error": "bold red",
    "reply": "cyan",
    "label": "bold magenta",
}

# C0/C1 control characters other than newline and tab: a byte-level model can emit ESC and
# friends, which would drive the terminal rather than print.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# newlines, runs of other whitespace, and words: the units the typewriter places on a line
_WRAP_UNITS = re.compile(r"\n|[^\S\n]+|\S+")


class CommandError(Exception):
    """A mistyped command or value; str() is the one friendly line shown to the user."""


class EndSession(Exception):
    """Raised by /quit to leave the loop."""


@dataclass(frozen=True)
class Note:
    """A one-line message from a command, printed literally in the style of its kind."""

    text: str
    kind: str = "ok"


Result = Note | RenderableType | None


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


@dataclass(frozen=True)
class CheckpointSummary:
    """What /models shows about one checkpoint file."""

    path: Path
    size: int
    modified: float
    step: int | None = None
    val_loss: float | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# checkpoints on disk


def find_checkpoints(models_dir: Path) -> list[Path]:
    """Every *.pt under models_dir: best, latest, final first (in that order), then the rest."""
    if not models_dir.is_dir():
        return []
    found = sorted(p for p in models_dir.rglob("*.pt") if p.is_file())
    named = [models_dir / f"{name}.pt" for name in CHECKPOINT_NAMES]
    return [p for p in named if p in found] + [p for p in found if p not in named]


def summarize_checkpoint(path: Path) -> CheckpointSummary:
    """Step and val loss of a checkpoint, read without loading its tensors.

    mmap=True maps the file instead of reading it, so listing large checkpoints (weights plus
    optimizer state) stays instant; only the few plain values are touched.
    """
    stat = path.stat()
    base = CheckpointSummary(path, stat.st_size, stat.st_mtime)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile):
        return dataclasses.replace(base, error="unreadable")
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        return dataclasses.replace(base, error="not a gothic checkpoint")
    return dataclasses.replace(base, step=_as_int(ckpt.get("step")), val_loss=checkpoint_val_loss(ckpt))


def checkpoint_val_loss(info: dict) -> float | None:
    """The val loss of these weights: the last evaluation's, else the best one recorded."""
    for key in ("val_loss", "best_val_loss"):
        value = info.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def _as_int(value) -> int | None:
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


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


def no_checkpoint_message(models_dir: Path, wanted: Path | None = None) -> str:
    """How to get a model, for when there is none to load."""
    where = f"{wanted}: no such checkpoint" if wanted else f"no checkpoints under {models_dir}/"
    others = find_checkpoints(models_dir) if wanted else []
    hint = f"; found {', '.join(map(str, others[:3]))} (pass one with --checkpoint)" if others else ""
    return (f"{where}{hint}. Train a model first: `make demo` (the CPU demo, about 10 minutes) or "
            "`dvc repro`, then run `make chat`")


HEAVY_CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "sampler", "rng")


def load_engine(checkpoint_path: Path, tokenizer_path: Path, device: str) -> Engine:
    """Engine.from_checkpoint, keeping only the checkpoint's metadata afterwards.

    The engine holds the whole checkpoint dict as `checkpoint_info`; a chat lives long and may
    switch models, so it drops the weight copy and optimizer state (about 3x the model's size)
    that the model no longer needs.
    """
    engine = Engine.from_checkpoint(checkpoint_path, tokenizer_path, device)
    engine.checkpoint_info = {k: v for k, v in engine.checkpoint_info.items() if k not in HEAVY_CHECKPOINT_KEYS}
    return engine


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
    tokenizer_path: Path
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
            engine = load_engine(path, self.tokenizer_path, self.device)
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
# slash commands: parsing, handlers, registry


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


def cmd_temp(session: ChatSession, arg: str) -> Result:
    if not arg:
        return Note(f"temperature is {session.settings.temperature:g}", "info")
    session.update_settings(temperature=parse_float(arg, "temperature"))
    return Note(f"temperature set to {session.settings.temperature:g}")


def cmd_topk(session: ChatSession, arg: str) -> Result:
    if not arg:
        return Note(f"top-k is {session.settings.top_k}", "info")
    session.update_settings(top_k=parse_int(arg, "top-k"))
    return Note(f"top-k set to {session.settings.top_k}" + (" (off)" if session.settings.top_k == 0 else ""))


def cmd_topp(session: ChatSession, arg: str) -> Result:
    if not arg:
        return Note(f"top-p is {session.settings.top_p:g}", "info")
    session.update_settings(top_p=parse_float(arg, "top-p"))
    return Note(f"top-p set to {session.settings.top_p:g}" + (" (off)" if session.settings.top_p == 1 else ""))


def cmd_max(session: ChatSession, arg: str) -> Result:
    if not arg:
        return Note(f"replies stop after {session.settings.max_new_tokens} tokens", "info")
    session.update_settings(max_new_tokens=parse_int(arg, "max tokens"))
    return Note(f"replies now stop after {session.settings.max_new_tokens} tokens")


def cmd_seed(session: ChatSession, arg: str) -> Result:
    if not arg:
        state = "random" if session.next_seed is None else f"{session.next_seed} for the next reply"
        return Note(f"seed is {state}", "info")
    if arg.lower() in ("random", "off", "none"):
        session.next_seed = None
        return Note("seed is random: every reply differs")
    seed = parse_int(arg, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise CommandError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    session.next_seed = seed
    return Note(f"seed set to {seed}: the next replies use {seed}, {seed + 1}, ... and can be reproduced")


def cmd_model(session: ChatSession, arg: str) -> Result:
    if not arg:
        return Note(f"talking to {session.checkpoint_path}", "info")
    path = session.switch_model(arg)
    info = session.engine.checkpoint_info
    loss = checkpoint_val_loss(info)
    detail = f"step {info.get('step', '?')}" + (f", val loss {loss:.4f}" if loss is not None else "")
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
    return help_table()


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
    Command("temp", "/temp F", "sampling temperature: 0 is greedy, higher is wilder (e.g. /temp 0.8)", cmd_temp),
    Command("topk", "/topk N", "sample only from the N likeliest tokens; 0 turns top-k off", cmd_topk),
    Command("topp", "/topp F", "sample from the likeliest tokens up to probability F, in (0, 1]; 1 is off",
            cmd_topp),
    Command("max", "/max N", "longest reply, in tokens", cmd_max),
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
# renderables: everything dynamic goes in as Text, so no user or model string is read as markup


def format_count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def format_size(n_bytes: int) -> str:
    for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {suffix}"
    return f"{n_bytes} B"


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def model_line(session: ChatSession) -> str:
    info = session.engine.checkpoint_info
    return f"{session.checkpoint_path} · step {info.get('step', '?')} · val loss {_loss(checkpoint_val_loss(info))}"


def size_line(session: ChatSession) -> str:
    cfg, model = session.engine.model.cfg, session.engine.model
    return (f"{format_count(model.num_params(non_embedding=False))} parameters · {cfg.n_layer} layers · "
            f"{cfg.block_size}-token context · {model.vocab_size} vocab · {session.engine.device}")


def header(session: ChatSession) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style=STYLES["label"])
    grid.add_column(overflow="fold")  # long paths break rather than vanish in '...'
    grid.add_row("model", Text(model_line(session)))
    grid.add_row("size", Text(size_line(session)))
    grid.add_row("sampling", Text(session.settings_line()))
    grid.add_row("", Text("/help for commands · Ctrl+C stops a reply · Ctrl+D leaves", style="dim"))
    return Panel(grid, title="gothic chat", title_align="left", border_style="magenta", expand=False)


def models_table(models_dir: Path, current: Path | None = None) -> RenderableType:
    found = find_checkpoints(models_dir)
    if current is not None and current.is_file() and not any(_same_file(p, current) for p in found):
        found.append(current)
    if not found:
        return Note(no_checkpoint_message(models_dir), "warn")
    table = Table(title=Text(f"checkpoints in {models_dir}/"), title_justify="left")
    for column, justify in (("#", "right"), ("checkpoint", "left"), ("step", "right"), ("val loss", "right"),
                            ("size", "right"), ("modified", "left"), ("", "left")):
        table.add_column(column, justify=justify)
    listed = len(find_checkpoints(models_dir))  # rows past these (the loaded file elsewhere) get no number
    for number, path in enumerate(found, 1):
        s = summarize_checkpoint(path)
        loaded = current is not None and _same_file(path, current)
        table.add_row(str(number) if number <= listed else "", Text(_display_path(path, models_dir)),
                      "?" if s.step is None else str(s.step), Text(s.error or _loss(s.val_loss)),
                      format_size(s.size), datetime.fromtimestamp(s.modified).strftime("%Y-%m-%d %H:%M"),
                      Text("◀ loaded", style="green") if loaded else "")
    return table


def _display_path(path: Path, models_dir: Path) -> str:
    return str(path.relative_to(models_dir)) if path.is_relative_to(models_dir) else str(path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def params_table(session: ChatSession) -> Table:
    engine, s = session.engine, session.settings
    cfg, model, info = engine.model.cfg, engine.model, engine.checkpoint_info
    table = Table.grid(padding=(0, 2))
    table.add_column(style=STYLES["label"])
    table.add_column(overflow="fold")
    rows = [
        ("checkpoint", str(session.checkpoint_path)),
        ("step", str(info.get("step", "?"))),
        ("val loss", _loss(checkpoint_val_loss(info))),
        ("parameters", f"{model.num_params(non_embedding=False):,} ({model.num_params():,} without position "
                       "embeddings)"),
        ("layers", f"{cfg.n_layer} × {cfg.n_head} heads, {cfg.n_embd} dims"),
        ("context", f"{cfg.block_size} tokens"),
        ("vocab", f"{model.vocab_size} tokens"),
        ("device", str(engine.device)),
        ("temperature", f"{s.temperature:g}" + (" (greedy)" if s.temperature == 0 else "")),
        ("top-k", f"{s.top_k}" + (" (off)" if s.top_k == 0 else "")),
        ("top-p", f"{s.top_p:g}" + (" (off)" if s.top_p == 1 else "")),
        ("max tokens", str(s.max_new_tokens)),
        ("seed", "random" if session.next_seed is None else f"{session.next_seed} (next reply)"),
        ("conversation", f"{len(session.context)} turns, {len(session.prompt_ids())} tokens (the next prompt "
                         f"keeps at most {session.prompt_budget()})"),
    ]
    if (last := session.last_reply) is not None:
        rows.append(("last reply", reply_stats_line(last)))
    for label, value in rows:
        table.add_row(label, Text(value))
    return table


def reply_stats_line(stats: ReplyStats) -> str:
    rate = f" ({stats.tokens / stats.total_s:.0f} tokens/s)" if stats.total_s > 0 else ""
    first = "" if stats.first_token_s is None else f", first text after {stats.first_token_s * 1000:.0f} ms"
    return f"{stats.tokens} tokens in {stats.total_s:.2f} s{rate}{first}"


def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style=STYLES["label"])
    table.add_column(overflow="fold")
    for command in COMMANDS.values():
        table.add_row(Text(command.usage), Text(command.summary))
    table.add_row("", "")
    table.add_row("Enter", "send a line; the model replies with its next paragraph (// sends a leading /)")
    table.add_row("Ctrl+C", "stop a reply; at the prompt, leave")
    table.add_row("Ctrl+D", "leave")
    return table


def render(console: Console, result: Result) -> None:
    """The one place command results reach the screen."""
    if result is None:
        return
    if isinstance(result, Note):
        console.print(Text(result.text, style=STYLES[result.kind]), soft_wrap=True)
    else:
        console.print(result)


def note(console: Console, text: str, kind: str = "info") -> None:
    render(console, Note(text, kind))


# ---------------------------------------------------------------------------------------------
# transcript


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


def transcript_markdown(session: ChatSession, now: datetime) -> str:
    lines = [f"# gothic chat, {session.started:%Y-%m-%d %H:%M}", "",
             f"Model: `{session.checkpoint_path}` (step {session.engine.checkpoint_info.get('step', '?')}) · "
             f"{session.settings_line()} · saved {now:%Y-%m-%d %H:%M}", ""]
    for turn in session.transcript:
        if turn.speaker == "note":
            lines += [f"*{turn.text}*", ""]
        elif turn.speaker == "you":
            lines += [f"**you:** {turn.text}", ""]
        else:
            stopped = " *(stopped)*" if turn.stopped else ""
            lines += [f"**{turn.speaker}:**{stopped}", ""]
            lines += [f"> {line}".rstrip() for line in turn.text.split("\n")] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# streaming a reply


class Typewriter:
    """Prints a reply as it streams, word-wrapped with a hanging indent.

    Rich cannot wrap text that arrives in pieces (it does not know the cursor column), so this
    tracks the column itself. A word can arrive split over several tokens, so the trailing partial
    word of each piece waits for the next piece before it is placed (a delay of at most one word),
    and spaces wait for the word after them, so a line never ends in a space.
    """

    def __init__(self, console: Console, style: str = STYLES["reply"], indent: str = REPLY_INDENT):
        self.console, self.style, self.indent = console, style, indent
        self.width = max(len(indent) + 20, min(console.width, MAX_WRAP) - 1)
        self.column = 0
        self.pending = ""  # a word that may continue in the next piece
        self.gap = ""  # spaces waiting for the next word
        self.started = False  # leading blank lines of a reply are not shown

    def write(self, piece: str) -> None:
        units = _WRAP_UNITS.findall(self.pending + _CONTROL.sub("", piece.replace("\t", "    ")))
        self.pending = units.pop() if units and not units[-1].isspace() else ""
        self._emit(units)

    def close(self) -> None:
        """Place the last word and end the line, leaving the cursor at column 0."""
        self._emit([self.pending] if self.pending else [])
        self.pending = self.gap = ""
        if self.started:
            self.console.print()

    def _emit(self, units: list[str]) -> None:
        out: list[str] = []
        for unit in units:
            if unit == "\n":
                if self.started:
                    out.append("\n" + self.indent)
                    self.column, self.gap = len(self.indent), ""
            elif unit.isspace():
                self.gap += unit
            else:
                out.append(self._place(unit))
        if out:
            self.console.print(Text("".join(out), style=self.style), end="", soft_wrap=True)

    def _place(self, word: str) -> str:
        """The text that puts `word` on screen: indent, or the gap before it, or a line break."""
        if not self.started:  # the first word: blank lines and spaces before it are dropped
            self.started, self.column, self.gap = True, len(self.indent) + cell_len(word), ""
            return self.indent + word
        gap, self.gap = self.gap, ""
        width = cell_len(word)
        if self.column + cell_len(gap) + width > self.width and self.column > len(self.indent):
            self.column = len(self.indent) + width
            return "\n" + self.indent + word  # the line break replaces the gap
        self.column += cell_len(gap) + width
        return gap + word


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
    line = line.strip()
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
            answer = read_line(f"load which checkpoint? [1 = {_display_path(found[0], models_dir)}] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return None
        if not answer:
            return found[0]
        try:
            return resolve_checkpoint(answer, models_dir)
        except CommandError as e:
            note(console, str(e), "error")


def start_chat(checkpoint: Path | None, tokenizer: Path, models_dir: Path, settings: SamplingSettings,
               seed: int | None = None, device: str = "auto", logs_dir: Path = Path("logs"),
               console: Console | None = None, read_line: Callable[[str], str] | None = None) -> None:
    """What `gothic-chat` runs: pick and load a checkpoint, then the REPL.

    Raises GothicError (shown as one line by run_main) for bad settings or a missing model.
    """
    if problems := settings_problems(settings):
        raise GothicError("; ".join(problems))
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise GothicError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    console = console or Console()
    read_line = read_line or terminal_reader(console)
    if checkpoint is None:
        checkpoint = choose_checkpoint(models_dir, console, read_line)
        if checkpoint is None:
            return
    elif not checkpoint.is_file():
        raise GothicError(no_checkpoint_message(models_dir, checkpoint))
    with console.status(f"loading {checkpoint} ..."):
        engine = load_engine(checkpoint, tokenizer, device)
    session = ChatSession(engine, checkpoint, tokenizer, models_dir=models_dir, logs_dir=logs_dir, device=device,
                          settings=settings, next_seed=seed)
    run_chat(session, console, read_line)
