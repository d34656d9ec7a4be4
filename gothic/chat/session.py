"""What a chat remembers: the model, the sampling settings and the conversation, with no terminal I/O.

Conversation format. The model is a plain language model trained on books and plays, not an
instruction model, so a conversation is simply a document of paragraphs: every turn (yours, then
the model's) is one paragraph, and paragraphs are separated by a blank line. The prompt for a
reply is `<|endoftext|>` (a document start, as in the training bins) followed by

    turn 1 + "\\n\\n" + turn 2 + "\\n\\n" + ... + your new turn + "\\n\\n"

and the reply is the model's next paragraph: generation stops at the first blank line (the stop
string "\\n\\n"), at `<|endoftext|>`, or after `/max` tokens.

When the prompt would leave less than a quarter of the context window (or `/max` tokens, if
fewer) for the reply, the oldest turns are dropped, whole.

Everything here changes state and returns data; a problem the user can fix is a `CommandError`
(one friendly line). The commands (`gothic.chat.commands`), the screen (`gothic.chat.view`) and
the loop (`gothic.chat.repl`) all build on this module; it imports none of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gothic.checkpoint import CHECKPOINT_NAMES, find_checkpoints
from gothic.config import SamplingSettings, seed_problem
from gothic.errors import GothicError
from gothic.generation import Engine, TextStream

TURN_SEPARATOR = "\n\n"
STOP_STRINGS = ("\n\n",)
"""A blank line ends a paragraph, and so the model's turn."""
MIN_TEMPERATURE = 1e-3
"""Below this (but above 0) a temperature is greedy in all but name (the engine then keeps only
the top token), so the chat asks for the honest spelling, 0."""
MIN_TOP_P = 1e-3
"""A top-p this small keeps only the likeliest token (the engine always keeps it); /topk 1 says
that plainly, so the chat asks for it instead."""


class CommandError(Exception):
    """A mistyped command or value; str() is the one friendly line shown to the user."""


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
# checkpoints: which file a name means, and what to say when there is none


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


# ---------------------------------------------------------------------------------------------
# settings: the engine's rules, plus the chat's floors


def settings_problems(settings: SamplingSettings) -> list[str]:
    """The settings' own checks (naming the knobs as the chat's commands do: temperature, top-k,
    top-p, max tokens), plus the chat's floors on temperature and top-p (see MIN_TEMPERATURE)."""
    problems = settings.problems()
    if 0 < settings.temperature < MIN_TEMPERATURE:
        problems.append(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {settings.temperature:g}")
    if 0 < settings.top_p < MIN_TOP_P:
        problems.append(f"top-p must be at least {MIN_TOP_P:g} (/topk 1 keeps only the likeliest token), "
                        f"got {settings.top_p:g}")
    return problems


# ---------------------------------------------------------------------------------------------
# the session: model, settings and conversation


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
    dtype: str = "auto"
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

    def set_seed(self, seed: int | None) -> None:
        """Seed the next reply (None: a fresh random seed each time), or raise CommandError."""
        if problem := seed_problem(seed):
            raise CommandError(problem)
        self.next_seed = seed

    # -- models ------------------------------------------------------------------------------

    def switch_model(self, name: str) -> Path:
        """Load another checkpoint; on any failure the current model stays."""
        path = resolve_checkpoint(name, self.models_dir)
        try:
            engine = Engine.from_checkpoint(path, self.tokenizer_path, self.device, self.dtype)
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
