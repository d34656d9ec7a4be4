"""What the chat shows: the header, the tables, one-line notes, the typewriter that prints a reply
as it streams, and the transcript as markdown.

Everything dynamic goes in as `rich.text.Text`, never parsed as markup, so a generated `[bold]`
or `[/]` prints literally, and control characters a byte-level model may emit are dropped before
they reach the terminal. Command results reach the screen through one function, `render`: a
`Note` (one line in the style of its kind) or any rich renderable. Nothing here changes a session.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.cells import cell_len
from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gothic.chat.session import ChatSession, ReplyStats, no_checkpoint_message
from gothic.checkpoint import find_checkpoints, summarize_checkpoint
from gothic.errors import printable

REPLY_INDENT = "  "
MAX_WRAP = 100
"""Replies wrap at the console width, but no wider than this, for readable lines."""

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


@dataclass(frozen=True)
class Note:
    """A one-line message from a command, printed literally in the style of its kind."""

    text: str
    kind: str = "ok"


Result = Note | RenderableType | None


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
    return f"{session.checkpoint_path} · step {info.step} · val loss {_loss(info.weights_val_loss)}"


def dtype_name(dtype) -> str:
    """bf16 / fp32: short enough for the header's size line."""
    name = str(dtype).removeprefix("torch.")
    return {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}.get(name, name)


def size_line(session: ChatSession) -> str:
    cfg, model = session.engine.model.cfg, session.engine.model
    return (f"{format_count(model.num_params(non_embedding=False))} parameters · {cfg.n_layer} layers · "
            f"{cfg.block_size}-token context · {model.vocab_size} vocab · {session.engine.device} "
            f"{dtype_name(session.engine.dtype)}")


def header(session: ChatSession) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style=STYLES["label"])
    grid.add_column(overflow="fold")  # long paths break rather than vanish in '...'
    grid.add_row("model", Text(printable(model_line(session))))
    grid.add_row("size", Text(size_line(session)))
    grid.add_row("sampling", Text(session.settings_line()))
    grid.add_row("", Text("/help for commands · Ctrl+C stops a reply · Ctrl+D leaves", style="dim"))
    return Panel(grid, title="gothic chat", title_align="left", border_style="magenta", expand=False)


def models_table(models_dir: Path, current: Path | None = None) -> RenderableType:
    found = find_checkpoints(models_dir)
    listed = len(found)  # rows past these (the loaded file elsewhere) get no number
    if current is not None and current.is_file() and not any(_same_file(p, current) for p in found):
        found.append(current)
    if not found:
        return Note(no_checkpoint_message(models_dir), "warn")
    table = Table(title=Text(printable(f"checkpoints in {models_dir}/")), title_justify="left")
    for column, justify in (("#", "right"), ("checkpoint", "left"), ("step", "right"), ("val loss", "right"),
                            ("size", "right"), ("modified", "left"), ("", "left")):
        table.add_column(column, justify=justify)
    for number, path in enumerate(found, 1):
        s = summarize_checkpoint(path)
        loaded = current is not None and _same_file(path, current)
        table.add_row(str(number) if number <= listed else "", Text(display_path(path, models_dir)),
                      "?" if s.step is None else str(s.step), Text(s.error or _loss(s.val_loss)),
                      format_size(s.size), datetime.fromtimestamp(s.modified).strftime("%Y-%m-%d %H:%M"),
                      Text("◀ loaded", style="green") if loaded else "")
    return table


def display_path(path: Path, models_dir: Path) -> str:
    return printable(path.relative_to(models_dir) if path.is_relative_to(models_dir) else path)


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
        ("step", str(info.step)),
        ("val loss", _loss(info.weights_val_loss)),
        ("parameters", f"{model.num_params(non_embedding=False):,} ({model.num_params():,} non-embedding)"),
        ("layers", f"{cfg.n_layer} × {cfg.n_head} heads, {cfg.n_embd} dims"),
        ("context", f"{cfg.block_size} tokens"),
        ("vocab", f"{model.vocab_size} tokens"),
        ("device", f"{engine.device} ({dtype_name(engine.dtype)})"),
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


def help_table(rows: Iterable[tuple[str, str]]) -> Table:
    """/help: a (usage, summary) row per command, then the keys."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style=STYLES["label"])
    table.add_column(overflow="fold")
    for usage, summary in rows:
        table.add_row(Text(usage), Text(summary))
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
        console.print(Text(printable(result.text), style=STYLES[result.kind]), soft_wrap=True)
    else:
        console.print(result)


def note(console: Console, text: str, kind: str = "info") -> None:
    render(console, Note(text, kind))


# ---------------------------------------------------------------------------------------------
# transcript


def transcript_markdown(session: ChatSession, now: datetime) -> str:
    lines = [f"# gothic chat, {session.started:%Y-%m-%d %H:%M}", "",
             f"Model: `{session.checkpoint_path}` (step {session.engine.checkpoint_info.step}) · "
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
# the typewriter: a reply as it streams


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
