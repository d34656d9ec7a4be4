"""`gothic-chat` in a real pseudo-terminal: a prompt, Ctrl+C during the reply, a command, /quit."""

from __future__ import annotations

import io
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_checkpoint, tiny_gpt, venv_env

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.pty

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\x01\x02\r]")


def endless_gpt(tokenizer, words: int = 4):
    """A real GPT whose next-token scores ignore the context: `words` whole-word tokens score 3,
    everything else 0. With --topk equal to `words` it writes those words forever (never a newline
    or <|endoftext|>), so a reply is still streaming whenever Ctrl+C comes."""
    spelled = {tokenizer.decode([i]): i for i in tokenizer.get_vocab().values()}
    # the longest tokens that read as a space and an (ASCII) word, e.g. " the"
    chosen = sorted((t for t in spelled if t[:1] == " " and t[1:].isalpha() and t.isascii()),
                    key=lambda t: (-len(t), t))[:words]
    model = tiny_gpt(tokenizer.get_vocab_size(), 64, tie_embeddings=False)
    with torch.no_grad():
        # the final norm outputs the same vector e0 at every position, so logits = lm_head[:, 0]
        model.norm_f.weight.zero_()
        model.norm_f.bias.zero_()
        model.norm_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        for token in chosen:
            model.lm_head.weight[spelled[token], 0] = 3.0
    return model, [t[1:] for t in chosen]


@pytest.fixture(scope="module")
def endless_checkpoint(tiny_tokenizer, tiny_tokenizer_path, tmp_path_factory) -> tuple[Path, list[str]]:
    model, words = endless_gpt(tiny_tokenizer)
    folder = tmp_path_factory.mktemp("pty")
    save_tiny_checkpoint(folder / "models" / "best.pt", model, tiny_tokenizer_path, step=5)
    return folder, words


def spawn_chat(folder: Path, tokenizer_path: Path, *extra: str, sigint_ignored: bool = False,
               env: dict | None = None):
    """gothic-chat on models/best.pt in a 30x100 pseudo-terminal; returns (child, screen log).

    sigint_ignored starts it the way a background job or nohup does: with SIGINT ignored, which a
    process inherits (`trap '' INT` then exec)."""
    exe = Path(sys.executable).parent / "gothic-chat"
    args = ["--checkpoint", "models/best.pt", "--tokenizer", str(tokenizer_path), "--device", "cpu", *extra]
    if sigint_ignored:
        exe, args = Path("/bin/sh"), ["-c", "trap '' INT; exec \"$0\" \"$@\"", str(exe), *args]
    env = {**venv_env(), "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30", **(env or {})}
    child = pexpect.spawn(str(exe), args, cwd=str(folder), env=env, encoding="utf-8", timeout=20,
                          dimensions=(30, 100), codec_errors="replace")
    child.logfile_read = screen = io.StringIO()
    return child, screen


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["plain", "started-with-SIGINT-ignored"])
def test_ctrl_c_stops_a_reply_in_a_pseudo_terminal(endless_checkpoint, tiny_tokenizer_path, sigint_ignored):
    folder, words = endless_checkpoint
    child, screen = spawn_chat(folder, tiny_tokenizer_path, "--topk", str(len(words)), "--max", "100000",
                               "--seed", "3", sigint_ignored=sigint_ignored)
    try:
        child.expect_exact("you › ")
        child.sendline("Who goes there?")
        child.expect_exact("Who goes there?")  # the terminal's echo
        word = re.compile("|".join(rf"\b{re.escape(w)}\b" for w in words))
        sent = time.perf_counter()
        child.expect(word)
        first_word_s = time.perf_counter() - sent
        for _ in range(30):  # well into an endless reply ...
            child.expect(word)
        child.sendintr()  # ... Ctrl+C stops it
        child.expect_exact("(stopped)")
        child.expect_exact("you › ")
        child.sendline("/max 30")
        child.expect_exact("replies now stop after 30 tokens")
        child.expect_exact("you › ")
        child.sendline("/quit")
        child.expect_exact("farewell.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    text = ANSI.sub("", screen.getvalue())
    print(text, f"\nfirst reply word on screen after {first_word_s * 1000:.0f} ms")
    assert child.exitstatus == 0, text
    assert "gothic chat" in text and "models/best.pt · step 5" in text
    assert "Who goes there?" in text and "(stopped)" in text
    assert "Traceback" not in text and "interrupted" not in text


@pytest.mark.parametrize("key", ["ctrl-c", "ctrl-d", "ctrl-c-with-SIGINT-ignored"])
def test_ctrl_c_or_ctrl_d_at_the_prompt_leaves(endless_checkpoint, tiny_tokenizer_path, key):
    child, screen = spawn_chat(endless_checkpoint[0], tiny_tokenizer_path, sigint_ignored=key.endswith("ignored"))
    try:
        child.expect_exact("you › ")
        child.sendintr() if key.startswith("ctrl-c") else child.sendeof()
        child.expect_exact("farewell.")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    text = ANSI.sub("", screen.getvalue())
    assert child.exitstatus == 0, text
    assert "Traceback" not in text and "interrupted" not in text


def test_latin1_bytes_typed_at_the_prompt_do_not_end_the_chat(endless_checkpoint, tiny_tokenizer_path):
    """A Latin-1 terminal sends é as the single byte 0xE9, under a strict UTF-8 stdin here (the default
    in a UTF-8 locale, forced). GNU readline may drop the byte itself; whatever reaches the chat, it
    answers and goes on (piped input, where the byte does arrive, is in tests/test_bad_input.py)."""
    child, screen = spawn_chat(endless_checkpoint[0], tiny_tokenizer_path, "--max", "3",
                               env={"PYTHONIOENCODING": "utf-8:strict"})
    try:
        child.expect_exact("you › ")
        os.write(child.child_fd, b"caf\xe9\r")  # raw bytes: the child is in text mode
        child.expect_exact("caf")
        child.expect_exact("you › ")
        child.sendeof()  # Ctrl+D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    text = ANSI.sub("", screen.getvalue())
    assert child.exitstatus == 0 and "Traceback" not in text and text.rstrip().endswith("farewell."), text
