"""The chat REPL driven with scripted input and a recording console: commands, bad values, model
switching, reset, save, context trimming, Ctrl+C, markup in model text, and a random-input run."""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from gothic.chat import ChatSession, run_chat, start_chat
from gothic.chat.commands import COMMANDS, parse_command
from gothic.chat.repl import PROMPT
from gothic.chat.view import Typewriter
from gothic.checkpoint import CheckpointInfo
from gothic.cli import chat_main
from gothic.config import SamplingSettings
from gothic.generation import Engine

from conftest import save_tiny_checkpoint, tiny_gpt

CTRL_C = object()  # a scripted "line" that presses Ctrl+C at the prompt


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1 decoding of a tiny model is fastest on one thread (and the CI box is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models_dir(tiny_tokenizer, tiny_tokenizer_path, tmp_path_factory) -> Path:
    """best.pt (64-token context), latest.pt (32), and a broken file, all for the tiny tokenizer."""
    folder = tmp_path_factory.mktemp("models")
    vocab = tiny_tokenizer.get_vocab_size()
    save_tiny_checkpoint(folder / "best.pt", tiny_gpt(vocab, 64, seed=0, weight_std=0.5), tiny_tokenizer_path, 10)
    save_tiny_checkpoint(folder / "latest.pt", tiny_gpt(vocab, 32, seed=1, weight_std=0.5), tiny_tokenizer_path, 20)
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    return folder


@pytest.fixture(scope="module")
def engine(models_dir, tiny_tokenizer_path) -> Engine:
    return Engine.from_checkpoint(models_dir / "best.pt", tiny_tokenizer_path, "cpu")


@pytest.fixture
def session(engine, models_dir, tiny_tokenizer_path, tmp_path) -> ChatSession:
    return make_session(engine, models_dir, tiny_tokenizer_path, tmp_path / "logs")


def make_session(engine, models_dir, tokenizer_path, logs_dir, max_new_tokens: int = 8) -> ChatSession:
    return ChatSession(engine, models_dir / "best.pt", tokenizer_path, models_dir=models_dir, logs_dir=logs_dir,
                       device="cpu", settings=SamplingSettings(max_new_tokens=max_new_tokens), next_seed=1)


def drive(session: ChatSession, lines: list, width: int = 80) -> str:
    """Run the REPL on scripted lines; return the screen text, input echoed as a terminal would."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, legacy_windows=False)
    pending = list(lines)

    def read_line(prompt: str) -> str:
        if not pending:
            raise EOFError
        line = pending.pop(0)
        if line is CTRL_C:
            raise KeyboardInterrupt
        out.write(prompt + line + "\n")
        return line

    run_chat(session, console, read_line)
    return out.getvalue()


def answer_to(screen: str, line: str) -> list[str]:
    """The screen lines printed in answer to one input line (up to the next prompt)."""
    after = screen.split(PROMPT + line + "\n", 1)[1]
    lines = after.split(PROMPT, 1)[0].rstrip("\n").split("\n")
    return lines[:-2] if lines[-2:] == ["", "farewell."] else lines  # the last answer, before EOF


def script_tokens(monkeypatch, session: ChatSession, *texts: str, interrupt_after: int | None = None,
                  max_new_tokens: int = 64) -> None:
    """Make the engine 'sample' exactly the tokens of `texts` (one per draw, the last repeating),
    through the real TextStream and up to max_new_tokens, optionally raising KeyboardInterrupt
    after some tokens, as Ctrl+C during a reply does."""
    engine = session.engine
    session.settings = SamplingSettings(max_new_tokens=max_new_tokens)
    draws = [engine.tokenizer.encode(text, add_special_tokens=False).ids for text in texts]

    def token_steps(prompt_ids, settings, seeds, use_cache=True):
        ids = draws.pop(0) if len(draws) > 1 else draws[0]
        for n, token_id in enumerate(ids[:settings.max_new_tokens]):
            if n == interrupt_after:
                raise KeyboardInterrupt
            yield torch.tensor([token_id])

    monkeypatch.setattr(engine, "token_steps", token_steps)


# --- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, parsed", [
    ("/temp 0.8", ("temp", "0.8")),
    ("/TEMP   0.8  ", ("temp", "0.8")),
    ("/temp\t0.8", ("temp", "0.8")),
    ("/save my story.md", ("save", "my story.md")),
    ("/reset", ("reset", "")),
    ("/", ("", "")),
    ("The night was dark", None),
    ("//not a command", None),
])
def test_parse_command(line, parsed):
    assert parse_command(line) == parsed


# --- replies and context --------------------------------------------------------------------------


def test_a_reply_streams_and_joins_the_context(session):
    screen = drive(session, ["The night was dark"])
    assert "gothic chat" in screen and "best.pt" in screen and "temp 0.8" in screen
    reply = session.context[1]
    assert session.context == ["The night was dark", reply]
    assert [t.speaker for t in session.transcript] == ["you", "best.pt"]
    assert session.last_reply is not None and session.last_reply.first_token_s is not None
    assert screen.rstrip().endswith("farewell.")
    # the prompt is a document of paragraphs: <|endoftext|> turn \n\n turn \n\n
    ids = session.prompt_ids()
    assert ids[0] == session.engine.eot
    assert session.engine.tokenizer.decode(ids[1:]) == f"The night was dark\n\n{reply}\n\n"


def test_double_slash_sends_text_that_starts_with_a_slash(session):
    drive(session, ["//slash and burn"])
    assert session.context[0] == "/slash and burn"


def test_blank_lines_are_ignored(session):
    drive(session, ["", "   "])
    assert session.context == [] and session.last_reply is None


def test_reply_stops_at_a_blank_line(session, monkeypatch):
    script_tokens(monkeypatch, session, " The bell tolled.\n\nA second paragraph")
    screen = drive(session, ["Listen"])
    assert session.context == ["Listen", "The bell tolled."]
    assert "  The bell tolled." in screen and "second paragraph" not in screen


def test_an_empty_reply_is_drawn_again(session, monkeypatch):
    script_tokens(monkeypatch, session, "\n\nlater", " Hark!\n\n")
    screen = drive(session, ["Listen"])
    assert session.context == ["Listen", "Hark!"] and "without a word" not in screen
    assert session.next_seed == 3  # two draws, two seeds


def test_empty_replies_are_explained(session, monkeypatch):
    script_tokens(monkeypatch, session, "\n\nlater")
    screen = drive(session, ["Listen"])
    assert "ended its turn without a word" in screen
    assert session.context == ["Listen"]


def test_reply_cut_at_max_tokens_says_so(session, monkeypatch):
    script_tokens(monkeypatch, session, " on and on and on and on", max_new_tokens=3)
    screen = drive(session, ["Go on"])
    assert "cut at the 3-token limit" in screen


def test_markup_in_model_text_prints_literally(session, monkeypatch):
    script_tokens(monkeypatch, session, " a [bold] b [/] c [red]d[/red]")
    screen = drive(session, ["show me"])
    assert "  a [bold] b [/] c [red]d[/red]" in screen


def test_markup_in_user_text_and_names_prints_literally(session):
    screen = drive(session, ["/model [/]", "/save [bold]"])
    assert "no checkpoint '[/]'" in screen
    assert (session.logs_dir / "[bold].md").is_file()


def test_control_characters_in_model_text_are_not_sent_to_the_terminal(session, monkeypatch):
    script_tokens(monkeypatch, session, " bell\x07 and \x1b[2J escape")
    screen = drive(session, ["ring"])
    assert "\x07" not in screen and "\x1b" not in screen and "bell and [2J escape" in screen


def test_ctrl_c_during_a_reply_stops_it_and_the_session_goes_on(session, monkeypatch):
    script_tokens(monkeypatch, session, " The wind moaned through the broken gates", interrupt_after=4)
    screen = drive(session, ["Once", "/temp"])
    assert answer_to(screen, "Once")[-1] == "(stopped)"
    assert answer_to(screen, "/temp") == ["temperature is 0.8"]
    assert session.last_reply.finish_reason == "closed"
    assert session.transcript[-1].stopped and session.context[-1] == session.transcript[-1].text


def test_ctrl_c_or_ctrl_d_at_the_prompt_leaves(session):
    screen = drive(session, [CTRL_C, "never read"])
    assert "never read" not in screen and screen.rstrip().endswith("farewell.")
    assert drive(session, []).rstrip().endswith("farewell.")  # EOF = Ctrl+D


def test_same_seed_gives_the_same_reply(engine, models_dir, tiny_tokenizer_path, tmp_path):
    replies = []
    for _ in range(2):
        s = make_session(engine, models_dir, tiny_tokenizer_path, tmp_path)
        drive(s, ["/seed 42", "/temp 1.2", "Hello there"])
        replies.append(s.context[-1])
        assert s.next_seed == 43  # each reply takes the next seed
    assert replies[0] == replies[1]


def test_old_turns_are_trimmed_to_fit_the_context(session, monkeypatch):
    prompt_sizes = []
    real_stream = session.engine.stream
    monkeypatch.setattr(session.engine, "stream", lambda prompt, *a, **k: (
        prompt_sizes.append(len(prompt)), real_stream(prompt, *a, **k))[1])
    session.settings = SamplingSettings(max_new_tokens=4)
    lines = [f"Turn number {n} of the tale" for n in range(8)]
    screen = drive(session, lines)
    assert "outgrew the 64-token context: forgot the" in screen
    assert session.context[0] != lines[0]  # the oldest turns are gone ...
    assert max(prompt_sizes) <= session.prompt_budget() == 64 - 4  # ... every prompt left room for the reply
    assert [t.text for t in session.transcript if t.speaker == "you"] == lines  # the transcript keeps all


def test_a_turn_longer_than_the_context_is_cut_with_a_notice(session):
    screen = drive(session, ["word " * 200])
    assert "longer than the 64-token context" in screen


# --- commands ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, field, value", [
    ("/temp 0.5", "temperature", 0.5),
    ("/temp 0", "temperature", 0.0),
    ("/topk 5", "top_k", 5),
    ("/topk 0", "top_k", 0),
    ("/topp 0.5", "top_p", 0.5),
    ("/topp 1", "top_p", 1.0),
    ("/max 3", "max_new_tokens", 3),
])
def test_setting_commands(session, line, field, value):
    screen = drive(session, [line])
    assert getattr(session.settings, field) == value
    assert len(answer_to(screen, line)) == 1


@pytest.mark.parametrize("line, complaint", [
    ("/temp abc", "temperature must be a number, got 'abc' (usage: /temp F)"),
    ("/temp -1", "temperature must be >= 0"),
    ("/temp nan", "temperature must be >= 0"),
    ("/temp 1e-40", "temperature must be 0 (greedy) or at least 0.001"),
    ("/topk 1.5", "top-k must be a whole number"),
    ("/topk -2", "top-k must be >= 1, or 0"),
    ("/topp 0", "top-p must be in (0, 1]"),
    ("/topp 1.5", "top-p must be in (0, 1]"),
    ("/topp 1e-56", "top-p must be at least 0.001"),
    ("/max 0", "max tokens must be >= 1"),
    ("/max many", "max tokens must be a whole number"),
    ("/seed -1", "seed must be between 0 and"),
    ("/seed x", "seed must be a whole number"),
    ("/reset now", "/reset: takes no argument, got 'now' (usage: /reset)"),
    ("/models all", "takes no argument"),
    ("/params x", "takes no argument"),
    ("/model nosuch", "no checkpoint 'nosuch': use best, latest, final"),
    ("/model 9", "there is no checkpoint number 9"),
    ("/help nosuch", "unknown command /nosuch"),
    ("/save ../outside.md", "give a file name inside"),
    ("/save /tmp/abs.md", "give a file name inside"),
    ("/save bad\x00name", "cannot save there"),
    ("/tmep 1", "unknown command /tmep: did you mean /temp?"),
    ("/xyzzy", "unknown command /xyzzy: /help lists them"),
    ("/", "unknown command /:"),
])
def test_bad_input_gets_one_friendly_line_and_the_session_goes_on(session, line, complaint):
    before = session.settings
    screen = drive(session, [line, "/max"])
    answer = answer_to(screen, line)
    assert len(answer) == 1 and complaint in answer[0], answer
    assert session.settings == before and session.checkpoint_path.name == "best.pt"
    assert answer_to(screen, "/max") == ["replies stop after 8 tokens"]


@pytest.mark.parametrize("line, shown", [
    ("/temp", "temperature is 0.8"),
    ("/topk", "top-k is 40"),
    ("/topp", "top-p is 0.9"),
    ("/max", "replies stop after 8 tokens"),
    ("/seed", "seed is 1 for the next reply"),
    ("/model", "talking to"),
    ("/help temp", "/temp F"),
])
def test_commands_without_a_value_show_the_current_one(session, line, shown):
    assert shown in answer_to(drive(session, [line]), line)[0]


def test_seed_random_and_seed_n(session):
    drive(session, ["/seed random"])
    assert session.next_seed is None
    drive(session, ["/seed 7"])
    assert session.next_seed == 7


def test_help_is_generated_from_the_registry(session):
    screen = drive(session, ["/help"], width=120)
    for command in COMMANDS.values():
        assert command.usage in screen and command.summary in screen
    assert "Ctrl+C" in screen


@pytest.mark.parametrize("line", ["/quit", "/exit", "/QUIT"])
def test_quit_leaves(session, line):
    screen = drive(session, [line, "never read"])
    assert "never read" not in screen and screen.rstrip().endswith("farewell.")


def test_model_switch_by_name_number_and_path(session, models_dir):
    screen = drive(session, ["/model latest", "Hello"])
    assert session.checkpoint_path == models_dir / "latest.pt" and session.engine.block_size == 32
    # the typed view of plain values only: the chat keeps no second copy of weights or optimizer state
    assert isinstance(session.engine.checkpoint_info, CheckpointInfo) and session.engine.checkpoint_info.step == 20
    assert "now talking to" in screen and "step 20" in screen
    assert session.transcript[-1].speaker == "latest.pt"  # replies are credited to the model that wrote them
    drive(session, ["/model 1"])
    assert session.checkpoint_path == models_dir / "best.pt"
    drive(session, [f"/model {models_dir / 'latest.pt'}"])
    assert session.engine.block_size == 32
    assert session.context[0] == "Hello"  # the conversation carries over


def test_a_broken_checkpoint_does_not_replace_the_model(session):
    screen = drive(session, ["/model broken"])
    [answer] = answer_to(screen, "/model broken")
    assert answer.startswith("/model: ") and "broken.pt" in answer
    assert session.checkpoint_path.name == "best.pt"


def test_models_table(session):
    screen = drive(session, ["/models"], width=120)
    rows = {line.split("│")[2].strip(): line for line in screen.splitlines() if line.count("│") > 3}
    assert list(rows)[:3] == ["best.pt", "latest.pt", "broken.pt"]
    assert " 10 " in rows["best.pt"] and "9.0000" in rows["best.pt"] and "loaded" in rows["best.pt"]
    assert " 20 " in rows["latest.pt"] and "loaded" not in rows["latest.pt"]
    assert "unreadable" in rows["broken.pt"]


def test_params_shows_model_and_sampling(session):
    screen = drive(session, ["Hi", "/params"], width=120)
    model = session.engine.model
    counts = f"{model.num_params(non_embedding=False):,} ({model.num_params():,} non-embedding)"
    for expected in (counts, "2 × 2 heads", "64 tokens", "300 tokens",
                     "9.0000", "temperature", "0.8", "max tokens", "last reply", "first text after",
                     f"cpu ({'bf16' if session.engine.dtype == torch.bfloat16 else 'fp32'})"):
        assert expected in screen, expected
    assert "position" not in screen  # the count leaves out every lookup table, not only position embeddings


def test_reset_forgets_the_conversation(session):
    screen = drive(session, ["Hi", "/reset"])
    assert session.context == [] and "2 turns forgotten" in screen
    assert session.transcript[-1].text == "conversation reset"


def test_save_writes_the_transcript_as_markdown(session, monkeypatch):
    script_tokens(monkeypatch, session, " I am the ghost.\n\n")
    screen = drive(session, ["Who is there?", "/save", "/save story", "/save sub/night.md"])
    saved = sorted(session.logs_dir.rglob("*.md"))
    assert len(saved) == 3
    default = next(p for p in saved if p.name.startswith("chat-"))
    assert f"saved the transcript to {default}" in screen
    text = (session.logs_dir / "story.md").read_text(encoding="utf-8")
    assert text.startswith("# gothic chat")
    assert "**you:** Who is there?" in text and "**best.pt:**" in text and "> I am the ghost." in text
    assert (session.logs_dir / "sub" / "night.md").is_file()


def test_typewriter_wraps_words_that_arrive_in_pieces():
    out = io.StringIO()
    writer = Typewriter(Console(file=out, width=30, color_system=None))
    for piece in ["\n\n", "The cas", "tle stood upon the hi", "ll, dark against the evening sky", ".\nEnd"]:
        writer.write(piece)
    writer.close()
    lines = out.getvalue().split("\n")
    assert lines[0] == "  The castle stood upon the"
    assert all(len(line) <= 29 and line.startswith("  ") for line in lines[:-1])
    assert " ".join(" ".join(lines).split()) == "The castle stood upon the hill, dark against the evening sky. End"


# --- startup ----------------------------------------------------------------------------------------


def test_start_without_checkpoint_asks_which_to_load(models_dir, tiny_tokenizer_path, tmp_path):
    out = io.StringIO()
    answers = iter(["nosuch", "2", "/quit"])
    start_chat(None, tiny_tokenizer_path, models_dir, SamplingSettings(max_new_tokens=4), device="cpu",
               logs_dir=tmp_path, console=Console(file=out, width=120, color_system=None),
               read_line=lambda prompt: next(answers))
    screen = out.getvalue()
    assert "best.pt" in screen and "latest.pt" in screen  # the table came first
    assert "no checkpoint 'nosuch'" in screen
    assert "latest.pt · step 20" in screen.split("gothic chat")[1]


def test_start_without_checkpoint_and_eof_leaves_quietly(models_dir, tiny_tokenizer_path):
    def eof(prompt):
        raise EOFError

    start_chat(None, tiny_tokenizer_path, models_dir, SamplingSettings(),
               console=Console(file=io.StringIO()), read_line=eof)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/models/best.pt"], "no such checkpoint. Train a model first: `make demo`"),
    ([], "no checkpoints under"),
    (["--checkpoint", "{models}/best.pt", "--temp", "-1"], "temperature must be >= 0"),
    (["--checkpoint", "{models}/best.pt", "--tokenizer", "{tmp}/none.json"], "tokenizer not found"),
])
def test_cli_errors_are_one_line(args, message, models_dir, tiny_tokenizer_path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(tmp=tmp_path, models=models_dir) for a in args]
    if "--tokenizer" not in argv:
        argv += ["--tokenizer", str(tiny_tokenizer_path)]
    with pytest.raises(SystemExit) as exit_info:
        chat_main(argv + ["--models-dir", str(tmp_path / "models")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gothic-chat: error: ") and message in err and err.count("\n") == 1


# --- random input -----------------------------------------------------------------------------------

_ARGS = st.one_of(st.just(""), st.integers(-3, 6).map(str), st.floats(allow_nan=True).map(str),
                  st.sampled_from(["best", "latest", "broken", "1", "2", "9", "[/]", "random"]), st.text(max_size=12))
_MAX_ARGS = st.one_of(st.integers(-3, 6).map(str), st.sampled_from(["", "x", "1e9", "nan", "4.5"]))


def _command_line(name: str) -> st.SearchStrategy[str]:
    # /max only ever gets small values, so every reply stays a few tokens long
    return (_MAX_ARGS if name == "max" else _ARGS).map(lambda arg: f"/{name} {arg}")


_command_lines = st.one_of(
    st.sampled_from(sorted(set(COMMANDS) - {"quit"}) + ["tmp", "", "mdoel", "?"]).flatmap(_command_line),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30).map(lambda t: "/" + t),
)
_lines = st.one_of(_command_lines, _command_lines,
                   st.text(alphabet=st.characters(codec="utf-8"), max_size=40),  # text for the model
                   st.sampled_from(["[bold]", "[/]", "//x", " ", "The night was dark", "\x1b[2J"]))


@pytest.fixture(scope="module")
def fuzz_logs_dir():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_lines, min_size=30, max_size=70))
def test_random_input_never_crashes(lines, engine_for_fuzz):
    engine, models_dir, tokenizer_path, logs_dir = engine_for_fuzz
    session = make_session(engine, models_dir, tokenizer_path, logs_dir, max_new_tokens=4)
    screen = drive(session, lines, width=60)
    assert screen.rstrip().endswith("farewell.")
    assert re.search(r"Traceback", screen) is None


@pytest.fixture(scope="module")
def engine_for_fuzz(engine, models_dir, tiny_tokenizer_path, fuzz_logs_dir):
    return engine, models_dir, tiny_tokenizer_path, fuzz_logs_dir
