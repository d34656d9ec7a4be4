"""A small fixed corpus with the awkward cases of real books, for the byte-identity test of the data
stages (tests/test_golden.py). The sha256 figures there were produced by the pre-streaming code
(whole corpus in memory) on exactly this corpus: if a change alters any output, the test fails.

Changing this file changes the corpus and invalidates those figures: do not.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the night castle wind moaned through broken gates dark evening sky pale hollow eyes ancestors "
         "portraits dust lay thick upon table where old lord dined silence threshold afraid curious "
         "Émile naïve façade café — “quoted” words… 東京 dragon 🐉 slept don't I'll we've 1794 42nd").split()


def prose(rng: random.Random, n_words: int, newline_every: int = 14) -> str:
    out = []
    for i in range(n_words):
        word = rng.choice(WORDS)
        out.append(word.capitalize() if rng.random() < 0.08 else word)
        if rng.random() < 0.1:
            out[-1] += rng.choice(",.;:!?")
        out.append("\n" if (i + 1) % newline_every == 0 else " ")
        if (i + 1) % (newline_every * 5) == 0:
            out.append("\n" * rng.choice((1, 2, 3, 4)))
    return "".join(out)


def write_golden_raw(raw: Path) -> Path:
    """data/raw with a dozen documents of every kind prepare must handle."""
    rng = random.Random(20261126)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "nested" / "deeper").mkdir(parents=True, exist_ok=True)
    header = "The Project Gutenberg EBook of X\r\n\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n"
    footer = ("\r\nEnd of the Project Gutenberg EBook of X\r\n\r\n"
              "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicence")
    docs = {
        "a_gutenberg_crlf.txt": (header + prose(rng, 3000).replace("\n", "\r\n") + footer).encode("utf-8"),
        "b_bom.txt": ("\ufeff" + prose(rng, 2000)).encode("utf-8"),
        "c_blank_runs.md": ("\n\n\n  indented line  \n\t\n" + prose(rng, 2500, 5) + "\n\n\n\n\n").encode("utf-8"),
        "d_eot_inside.txt": (prose(rng, 800) + "<|endoftext|>" + prose(rng, 800)).encode("utf-8"),
        # one line of ~150 kB: no newline to cut at, only spaces
        "e_one_long_line.txt": prose(rng, 25000, newline_every=10**9).encode("utf-8"),
        # paragraphs longer than a piece, newlines inside
        "f_long_paragraphs.txt": prose(rng, 30000, newline_every=9).encode("utf-8"),
        "g_nfd.txt": ("Cafe\u0301 " * 200 + prose(rng, 1000)).encode("utf-8"),
        "h_latin1.txt": ("caf\u00e9 na\u00efve " * 300 + "\n" + prose(rng, 500).encode("ascii", "ignore").decode())
        .encode("latin-1"),
        "nested/i_spaces_at_ends.txt": ("   leading spaces\n" + prose(rng, 1500) + "   \n  \n").encode("utf-8"),
        "nested/deeper/j_numbers.md": ("1 2 3 4 5 6 7 8 9 10\n" * 300 + prose(rng, 1200)).encode("utf-8"),
        "k_crlf_only.txt": prose(rng, 1500).replace("\n", "\r\n").encode("utf-8"),
        "l_tabs_and_cr.txt": prose(rng, 1500).replace(" ", "\t", 200).replace("\n", "\r", 50).encode("utf-8"),
    }
    for name, data in docs.items():
        (raw / name).write_bytes(data)
    return raw
