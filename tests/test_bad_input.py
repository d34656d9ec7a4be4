"""Every mistake a user makes gets one clean line: a table of bad inputs, each run as the real program.

Each case runs a console script (or a DVC stage script) as a subprocess on tiny inputs and asserts:
the exit code (2 for usage and config mistakes, 1 when the machine refuses a write), exactly one
line on stderr, no "Traceback" anywhere, every file that was in the workspace before unchanged
(hashed before and after), and no temporary file left behind. A full disk and a read-only
filesystem are simulated by tests/faults/sitecustomize.py (we run as root, where chmod stops
nothing). The chat, which must survive bad input rather than exit, gets its own table below.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from gothic.config import to_dict
from gothic.errors import UNPRINTABLE

from conftest import (
    GENERATION_TEXT,
    ROOT,
    TINY_TEXT,
    committed_text,
    save_tiny_checkpoint,
    tiny_gpt,
    tiny_model_config,
    tiny_train_config,
    venv_env,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
import gothic_faults  # noqa: E402  (tests/faults is no package: the subprocesses find it on PYTHONPATH)

BIN = Path(sys.executable).parent
FAULTS = Path(__file__).resolve().parent / "faults"
pytestmark = pytest.mark.subprocess  # every case runs a script or stage in its own process


class Evil:
    """Unpickling this would run a shell command: a checkpoint must be refused, never executed."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def tampered(source: Path, target: Path, keep_digest: bool = False, **changes) -> Path:
    """A copy of a checkpoint with some top-level or model_config values changed; without its config and
    weights checksums (as files before them had), unless keep_digest, so the checks behind those are tried too."""
    ckpt = torch.load(source, weights_only=True)
    if not keep_digest:
        ckpt.pop("model_config_sha256", None)
        ckpt.pop("weights_sha256", None)
    for key, value in changes.items():
        if key.startswith("cfg_"):
            ckpt["model_config"][key[4:]] = value
        else:
            ckpt[key] = value
    torch.save(ckpt, target)
    return target


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_tokenizer_path, train_bins) -> Path:
    """A project folder with params.yaml, bins, a tokenizer, a trained models/ and damaged files."""
    from gothic.tokenizer import save_tokenizer, train_tokenizer
    from gothic.train import train

    root = tmp_path_factory.mktemp("bad_input")
    shutil.copy(tiny_tokenizer_path, root / "tok.json")
    shutil.copytree(train_bins, root / "bin")
    params = yaml.safe_load(committed_text("params.yaml"))
    params["model"], params["train"] = to_dict(tiny_model_config()), to_dict(tiny_train_config(max_iters=4))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    train(tiny_model_config(), tiny_train_config(max_iters=4), root / "bin", root / "tok.json", root / "models")
    (root / "corpus.txt").write_text(GENERATION_TEXT * 20, encoding="utf-8")
    (root / "empty.yaml").write_text("# nothing here\n", encoding="utf-8")
    (root / "no_train.yaml").write_text(yaml.safe_dump({"model": params["model"]}), encoding="utf-8")
    (root / "dup.yaml").write_text("model:\n  n_layer: 2\n  n_layer: 3\n", encoding="utf-8")
    (root / "broken.yaml").write_text("train:\n  max_iters: [1, 2\n", encoding="utf-8")
    items = ["lol"] + [f"*l{i - 1}" for i in range(1, 9)]  # each level: 10 aliases of the level below
    laughs = "".join(f"l{i}: &l{i} [{', '.join([item] * 10)}]\n" for i, item in enumerate(items))
    (root / "laughs.yaml").write_text(laughs + yaml.safe_dump({"model": params["model"]}) + "train:\n  max_iters: 4\n"
                                      "prepare:\n  sources: *l8\n", encoding="utf-8")
    (root / "zero.yaml").symlink_to("/dev/zero")
    (root / "deep.yaml").write_text("train:\n  max_iters: " + "[" * 50_000 + "]" * 50_000 + "\n", encoding="utf-8")

    bad = root / "bad"
    bad.mkdir()
    best = root / "models" / "best.pt"
    (bad / "truncated.pt").write_bytes(best.read_bytes()[:300])
    (bad / "empty.pt").write_bytes(b"")
    (bad / "text.pt").write_text("not a checkpoint\n", encoding="utf-8")
    for protocol in (2, 4):
        (bad / f"evil{protocol}.pt").write_bytes(pickle.dumps(Evil(), protocol=protocol))
    torch.save({"model": Evil()}, bad / "evil_zip.pt")
    torch.save({"step": 3}, bad / "foreign.pt")
    tampered(best, bad / "config_str.pt", model_config="n_layer=2")
    tampered(best, bad / "vocab_huge.pt", vocab_size=10**9)
    tampered(best, bad / "vocab_str.pt", vocab_size="300")
    tampered(best, bad / "layers_str.pt", cfg_n_layer="2")
    tampered(best, bad / "block_huge.pt", cfg_block_size=10**9)
    tampered(best, bad / "nhead_3.pt", cfg_n_head=3)
    tampered(best, bad / "nhead_edited.pt", keep_digest=True, cfg_n_head=4)  # every weight keeps its shape
    tampered(best, bad / "layers_huge.pt", cfg_n_layer=10**9)
    tampered(best, bad / "newer.pt", format_version=99)
    tampered(best, bad / "format_str.pt", format_version="2")
    qk = save_tiny_checkpoint(bad / "qk.pt", tiny_gpt(300, qk_norm=True), root / "tok.json")
    tampered(qk, bad / "qk_nhead.pt", cfg_n_head=1)  # n_embd 16 / 1 divides, but q_norm weights are size 8
    # a tokenizer with another vocabulary than the models' 300
    save_tokenizer(train_tokenizer([root / "corpus.txt"], 280, 2), root / "other_tok.json")
    # a models/ the resume cases may damage without touching the good one
    shutil.copytree(root / "models", root / "resume_str")
    tampered(root / "resume_str" / "latest.pt", root / "resume_str" / "latest.pt", model_config="oops")
    nan = torch.load(best, weights_only=True)
    nan["model"]["wte.weight"][0, 0] = float("nan")
    del nan["weights_sha256"]  # as a file from before the checksum: the NaN check behind it must hold too
    torch.save(nan, bad / "nan.pt")
    # one flipped bit in the bytes of a weight, the file otherwise intact
    data, weight = best.read_bytes(), nan["model"]["wte.weight"][1].numpy().tobytes()
    at = data.index(weight) + 2
    (bad / "flipped.pt").write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    # latest.pt with one piece of what only resuming reads damaged, each in a models/ copy of its own
    latest = torch.load(root / "models" / "latest.pt", weights_only=True)
    moment_shape = {**latest["optimizer"][0], "state": {**latest["optimizer"][0]["state"],
                                                        0: {"step": torch.tensor(4.0), "exp_avg": torch.zeros(3),
                                                            "exp_avg_sq": torch.zeros(3)}}}
    moments = latest["optimizer"][0]["state"][0]
    nan_moment = {**latest["optimizer"][0], "state": {**latest["optimizer"][0]["state"], 0: {
        **moments, "exp_avg_sq": torch.full_like(moments["exp_avg_sq"], float("nan"))}}}

    def group_with(**settings) -> list:  # AdamW's state with one of its group settings damaged
        adamw = latest["optimizer"][0]
        groups = [{**adamw["param_groups"][0], **settings}, *adamw["param_groups"][1:]]
        return [{**adamw, "param_groups": groups}, *latest["optimizer"][1:]]
    for name, damage in {"opt_shape": {"optimizer": [moment_shape]}, "opt_list": {"optimizer": ["adam"]},
                         "opt_betas": {"optimizer": group_with(betas="x")}, "opt_nan": {"optimizer": [nan_moment]},
                         "opt_eps_str": {"optimizer": group_with(eps="1e-8")},
                         "history_str": {"history": {"train": [], "val": [{"step": 4, "val_loss": "low"}]}},
                         "rng": {"rng": [{"python": "x"}]}, "rng_empty": {"rng": []},
                         "sampler": {"sampler": {"batches_drawn": "eight"}},
                         "history": {"history": {"train": [{"loss": 1.0}], "val": []}},
                         "window": {"log_window": "lots"}, "horizon": {"horizon": "12"}}.items():
        shutil.copytree(root / "models", root / f"resume_{name}")
        torch.save({**latest, **damage}, root / f"resume_{name}" / "latest.pt")
    # bins whose meta.json or .bin is damaged, each a copy of its own
    meta = json.loads((root / "bin" / "meta.json").read_text())
    for name, text in {"dtype": json.dumps({**meta, "dtype": "float64"}), "list": json.dumps([meta]),
                       "no_splits": json.dumps({k: v for k, v in meta.items() if k != "splits"}),
                       "tokens_str": json.dumps({**meta, "splits": {**meta["splits"], "val": {
                           **meta["splits"]["val"], "tokens": "many"}}})}.items():
        shutil.copytree(root / "bin", root / f"bin_{name}")
        (root / f"bin_{name}" / "meta.json").write_text(text, encoding="utf-8")
    shutil.copytree(root / "bin", root / "bin_odd")
    with open(root / "bin_odd" / "train.bin", "ab") as f:
        f.write(b"\x00")  # half a uint16 token
    shutil.copytree(root / "bin", root / "bin_empty_val")
    (root / "bin_empty_val" / "val.bin").write_bytes(b"")
    # data/raw folders holding one file a book should not be
    for name in ("nul_late", "device", "sparse"):
        (root / f"raw_{name}").mkdir()
        (root / f"raw_{name}" / "book.txt").write_text(GENERATION_TEXT * 20, encoding="utf-8")
    (root / "raw_nul_late" / "odd.txt").write_bytes(GENERATION_TEXT.encode() * 400 + b"\x00binary")
    (root / "raw_device" / "zero.txt").symlink_to("/dev/zero")
    (root / "raw_twins").mkdir()
    for name in ("Book.txt", "book.txt", "other.txt"):  # names that differ in case only, the same text
        (root / "raw_twins" / name).write_text((GENERATION_TEXT if name != "other.txt" else TINY_TEXT) * 20,
                                               encoding="utf-8")
    with open(root / "raw_sparse" / "huge.txt", "wb") as f:
        f.truncate(3 << 30)  # 3 GB of nothing: a sparse file, no disk used
    (root / "a_file").write_text("in the way\n", encoding="utf-8")
    (root / "notes").mkdir()  # a folder of the user's that holds a train.txt of its own
    (root / "notes" / "train.txt").write_text("my training plan\n", encoding="utf-8")
    for name in ("fifo_lock", "linked_lock"):  # run folders whose .lock was planted
        (root / name).mkdir()
    os.mkfifo(root / "fifo_lock" / ".lock")
    os.link(root / "a_file", root / "linked_lock" / ".lock")  # truncating it would empty a_file
    # file names a terminal would act on: escape sequences, a newline, bytes that are not UTF-8
    for name, odd in {"escape": ESCAPES + ".txt", "newline": "two\nlines.txt",
                      "not_utf8": os.fsdecode(b"\xff\xfe.txt")}.items():
        (root / f"raw_{name}").mkdir()
        (root / f"raw_{name}" / "book.txt").write_text(GENERATION_TEXT * 20, encoding="utf-8")
        (root / f"raw_{name}" / odd).write_bytes(b"\x00binary")
    return root


def fingerprint(path: Path) -> str:
    """A file's hash; for the 3 GB sparse book, its size and times (hashing it twice a case took most of
    the table's time, and no command writes it)."""
    st = path.stat()
    if st.st_size > 64 << 20:
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Hash of every file; a run folder's .lock holds the pid of its last user, no output."""
    return {str(p.relative_to(root)): fingerprint(p)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and p.name != ".lock"}


def run(argv: list[str], cwd: Path, fault: str | None = None, stdin: bytes | None = None,
        ) -> subprocess.CompletedProcess:
    env = venv_env()
    env["COLUMNS"] = "300"  # rich and argparse must not wrap one line into two
    env["OMP_NUM_THREADS"] = "1"  # tiny models; spare the shared cores
    if fault:
        env["PYTHONPATH"] = str(FAULTS)
        env["GOTHIC_FAULT"] = fault.format(ws=cwd)
    return subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True, timeout=180)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """First item: a console script name or stages/NAME.py; `{ws}` is the workspace."""
    message: str
    """A fragment the one line on stderr must contain."""
    code: int = 2
    fault: str | None = None
    subprocess: bool = False
    """Run as a real process (stages always are); else the script's main(argv) runs in-process with
    the same output captured, which spares a ~1 s torch import per case."""
    may_change: tuple[str, ...] = ()
    """Files this command legitimately rewrites before it fails (latest.pt before the copy to best.pt)."""


def case(id: str, command: str, message: str, code: int = 2, fault: str | None = None, subprocess: bool = False,
         may_change: tuple[str, ...] = ()) -> Case:
    return Case(id, tuple(command.split()), message, code, fault, subprocess, may_change)


# clears the screen, retitles the terminal and rings its bell if printed raw
ESCAPES = "odd\x1b[2J\x1b]0;owned\x07"
ESCAPES_SHOWN = "odd\\x1b[2J\\x1b]0;owned\\x07"
GEN = "gothic-generate --tokenizer tok.json --device cpu --max-tokens 4"
TRAIN = ("gothic-train --data-dir bin --train-file train.bin --val-file val.bin --tokenizer tok.json "
         "--params params.yaml")
TOK = "gothic-tokenize --files corpus.txt --vocab-size 280"

CASES = [
    # --- params files and --set: config mistakes are caught before torch is even imported ---
    case("params-empty", "gothic-train --params empty.yaml", "the file is empty", subprocess=True),
    case("params-missing-section", "gothic-train --params no_train.yaml", "missing or empty section train"),
    case("params-missing-file", "gothic-train --params nope.yaml", "file not found"),
    case("params-is-folder", "gothic-train --params bin", "is a folder"),
    case("params-bad-yaml", "gothic-train --params broken.yaml", "not valid YAML at line"),
    case("params-duplicate-key", "gothic-train --params dup.yaml", "duplicate key"),
    case("params-billion-laughs", "gothic-train --params laughs.yaml",
         "more than 100,000 values once its YAML aliases"),
    case("params-nested-50k-deep", "gothic-train --params deep.yaml",
         "not valid YAML: nested thousands of levels deep"),
    case("set-n-layer-1e5", f"{TRAIN} --set model.n_layer=100000", "model.n_layer=100000 must be <= 1024"),
    case("set-n-embd-1e6", f"{TRAIN} --set model.n_embd=1048576 --set model.n_head=1",
         "model.n_embd=1048576 must be <= 65536"),
    case("params-dev-zero", "gothic-train --params zero.yaml", "larger than 1 MiB, so not a params file"),
    case("set-batch-size-1e7", f"{TRAIN} --set train.batch_size=10000000",
         "train.batch_size=10000000 must be <= 65536"),
    case("set-num-samples-1e7", f"{TRAIN} --set sample.num_samples=10000000", "sample.num_samples=10000000 must be <="),
    case("stage-empty-params", "stages/prepare.py data/raw data/processed m.json", "the file is empty",
         fault=None),
    case("set-lr-inf", f"{TRAIN} --set train.learning_rate=.inf", "expected a finite number", subprocess=True),
    case("set-lr-nan", f"{TRAIN} --set train.learning_rate=.nan", "expected a finite number"),
    case("set-val-fraction-nan", f"{TRAIN} --set prepare.val_fraction=.nan", "prepare.val_fraction"),
    case("set-dropout-nan", f"{TRAIN} --set model.dropout=.nan", "model.dropout"),
    case("set-seed-negative", f"{TRAIN} --set train.seed=-1", "train.seed must be between 0 and 4294967295, got -1"),
    case("set-seed-2**40", f"{TRAIN} --set train.seed=1099511627776", "train.seed must be between 0 and 4294967295"),
    case("set-block-size-huge", f"{TRAIN} --set model.block_size=1000000000", "model.block_size"),
    case("set-no-equals", f"{TRAIN} --set train.max_iters", "expected section.key=value"),
    case("set-typo", f"{TRAIN} --set train.max_iter=5", "did you mean train.max_iters"),
    case("set-no-for-bool", f"{TRAIN} --set train.resume=no", "train.resume='no' must be auto, true or false"),
    case("flag-lr-inf", f"{TRAIN} --lr inf", "--lr"),
    case("flag-max-iters-0", f"{TRAIN} --max-iters 0", "train.max_iters=0 must be >= 1"),
    case("flag-batch-size-word", f"{TRAIN} --batch-size many", "--batch-size"),
    case("flag-unknown", f"{TRAIN} --epochs 3", "unrecognized arguments"),
    # --- training inputs and outputs ---
    case("train-no-bins", "gothic-train --params params.yaml --data-dir nowhere --tokenizer tok.json", "nowhere"),
    case("train-no-tokenizer", f"{TRAIN} --tokenizer none.json", "none.json"),
    case("meta-dtype", f"{TRAIN} --data-dir bin_dtype", "dtype 'float64' is not uint16 or uint32"),
    case("meta-a-list", f"{TRAIN} --data-dir bin_list", "meta.json: bins of format None"),
    case("meta-no-splits", f"{TRAIN} --data-dir bin_no_splits", "splits is not a mapping of train and val"),
    case("meta-tokens-str", f"{TRAIN} --data-dir bin_tokens_str", "the val split has no token count"),
    case("bin-half-a-token", f"{TRAIN} --data-dir bin_odd",
         "bytes is no whole number of uint16 tokens (or none); the file is cut"),
    case("bin-empty-val", f"{TRAIN} --data-dir bin_empty_val", "val.bin: 0 bytes is no whole number"),
    case("train-out-dir-is-file", f"{TRAIN} --out-dir a_file", "cannot write checkpoints to a_file", code=1),
    case("train-out-dir-read-only", f"{TRAIN} --out-dir models", "Read-only file system", code=1,
         fault="readonly:{ws}/models"),
    case("train-disk-full-latest", f"{TRAIN} --out-dir models --max-iters 8",
         "latest.pt: the write stopped part-way", code=1, fault="full:latest.pt", subprocess=True),
    case("train-disk-full-best", f"{TRAIN} --out-dir models --max-iters 8", "best.pt: the write stopped part-way",
         code=1, fault="full:best.pt", may_change=("models/latest.pt",)),
    case("train-metrics-over-a-checkpoint", f"{TRAIN} --out-dir m_run --metrics models/best.pt",
         "--metrics models/best.pt exists and is not a metrics JSON file"),
    case("train-lock-fifo", f"{TRAIN} --out-dir fifo_lock", "fifo_lock/.lock: is not a file (a FIFO"),
    case("train-lock-hard-link", f"{TRAIN} --out-dir linked_lock", "linked_lock/.lock: is a hard link (2 names"),
    case("train-resume-config-str", f"{TRAIN} --out-dir resume_str --resume --max-iters 8",
         "model_config is a str"),
    # --- a latest.pt whose resume state is damaged: one line before a step is trained ---
    case("train-resume-moment-shape", f"{TRAIN} --out-dir resume_opt_shape --resume --max-iters 8",
         "optimizer state does not fit the model (exp_avg of parameter 0 is (3,)", subprocess=True),
    case("train-resume-optimizer-not-a-state", f"{TRAIN} --out-dir resume_opt_list --resume --max-iters 8",
         "optimizer state does not fit the model (not a state of this optimizer)"),
    case("train-resume-rng", f"{TRAIN} --out-dir resume_rng --resume --max-iters 8", "RNG state is damaged"),
    case("train-resume-rng-empty", f"{TRAIN} --out-dir resume_rng_empty --resume --max-iters 8",
         "RNG state is damaged"),
    case("train-resume-sampler", f"{TRAIN} --out-dir resume_sampler --resume --max-iters 8",
         "the sampler, weight average or RNG state is damaged"),
    case("train-resume-history", f"{TRAIN} --out-dir resume_history --resume --max-iters 8",
         "history is not train and val lists of rows of numbers with a step"),
    case("train-resume-log-window", f"{TRAIN} --out-dir resume_window --resume --max-iters 8",
         "log_window is not a (loss sum, steps) pair"),
    case("train-resume-horizon-str", f"{TRAIN} --out-dir resume_horizon --resume --max-iters 8",
         "horizon is a str, not a whole number"),
    case("train-resume-betas-str", f"{TRAIN} --out-dir resume_opt_betas --resume --max-iters 8",
         "optimizer state does not fit the model (its betas is 'x', not like (0.9, 0.95))", subprocess=True),
    case("train-resume-eps-str", f"{TRAIN} --out-dir resume_opt_eps_str --resume --max-iters 8",
         "optimizer state does not fit the model (its eps is '1e-8'"),
    case("train-resume-moment-nan", f"{TRAIN} --out-dir resume_opt_nan --resume --max-iters 8",
         "optimizer state does not fit the model (exp_avg_sq of parameter 0 holds NaN or infinite values)"),
    case("train-resume-history-loss-str", f"{TRAIN} --out-dir resume_history_str --resume --max-iters 8",
         "history is not train and val lists of rows of numbers"),
    # --- checkpoints ---
    case("ckpt-missing", f"{GEN} --checkpoint models/nope.pt", "checkpoint not found"),
    case("ckpt-is-folder", f"{GEN} --checkpoint models", "is a folder"),
    case("ckpt-is-tokenizer", f"{GEN} --checkpoint tok.json", "not a checkpoint"),
    case("ckpt-is-text", f"{GEN} --checkpoint bad/text.pt", "not a checkpoint"),
    case("ckpt-empty", f"{GEN} --checkpoint bad/empty.pt", "cannot be read"),
    case("ckpt-truncated", f"{GEN} --checkpoint bad/truncated.pt", "cannot be read"),
    case("ckpt-pickle-2", f"{GEN} --checkpoint bad/evil2.pt", "refused to load"),
    case("ckpt-pickle-4", f"{GEN} --checkpoint bad/evil4.pt", "refused to load", subprocess=True),
    case("ckpt-pickle-zip", f"{GEN} --checkpoint bad/evil_zip.pt", "refused to load"),
    case("ckpt-foreign", f"{GEN} --checkpoint bad/foreign.pt", "not a gothic checkpoint"),
    case("ckpt-newer", f"{GEN} --checkpoint bad/newer.pt", "newer than this gothic"),
    case("ckpt-format-str", f"{GEN} --checkpoint bad/format_str.pt", "format_version is a str, not a whole number"),
    case("ckpt-config-str", f"{GEN} --checkpoint bad/config_str.pt", "model_config is a str"),
    case("ckpt-vocab-1e9", f"{GEN} --checkpoint bad/vocab_huge.pt", "vocab_size 1000000000", subprocess=True),
    case("ckpt-vocab-str", f"{GEN} --checkpoint bad/vocab_str.pt", "vocab_size is a str"),
    case("ckpt-config-value-str", f"{GEN} --checkpoint bad/layers_str.pt", "model.n_layer: expected int, got '2'"),
    case("ckpt-block-1e9", f"{GEN} --checkpoint bad/block_huge.pt", "model.block_size=1000000000"),
    case("ckpt-layers-1e9", f"{GEN} --checkpoint bad/layers_huge.pt", "model.n_layer=1000000000 must be <= 1024"),
    case("ckpt-n-head-indivisible", f"{GEN} --checkpoint bad/nhead_3.pt", "divisible by model.n_head=3"),
    case("ckpt-n-head-edited", f"{GEN} --checkpoint bad/nhead_edited.pt",
         "model_config was changed after the checkpoint was written"),
    case("ckpt-n-head-qk-norm", f"{GEN} --checkpoint bad/qk_nhead.pt",
         "_norm.weight: (8,) in the file, (16,) expected"),
    case("ckpt-nan-weights", f"{GEN} --checkpoint bad/nan.pt", "bad/nan.pt: the weights hold NaN or infinite values"),
    case("init-from-missing", f"{TRAIN} --init-from bad/nothing.pt", "train.init_from: bad/nothing.pt does not exist"),
    case("init-from-truncated", f"{TRAIN} --init-from bad/truncated.pt", "bad/truncated.pt: cannot be read"),
    case("init-from-a-folder", f"{TRAIN} --init-from bad", "bad is not a gothic checkpoint or export folder"),
    case("init-from-flipped-bit", f"{TRAIN} --init-from bad/flipped.pt", "do not match the checksum"),
    case("ckpt-flipped-bit", f"{GEN} --checkpoint bad/flipped.pt", "bad/flipped.pt: the weights do not match the "
         "checksum"),
    case("evaluate-flipped-bit", "stages/evaluate.py bad/flipped.pt bin eval.json", "do not match the checksum"),
    case("chat-nan-weights", "gothic-chat --checkpoint bad/nan.pt --tokenizer tok.json", "hold NaN or infinite"),
    case("export-read-only-folder", "gothic-export --checkpoint models/best.pt --out-dir ro/export --no-verify",
         "cannot write ro/export: Read-only file system", code=1, fault="readonly:{ws}/ro", subprocess=True),
    case("export-disk-full-card", "gothic-export --checkpoint models/best.pt --out-dir full_export --no-verify",
         "README.md: No space left on device", code=1, fault="full:README.md", subprocess=True),
    case("export-nan-weights", "gothic-export --checkpoint bad/nan.pt --out-dir nan_export", "hold NaN or infinite",
         subprocess=True),
    case("ckpt-other-tokenizer", "gothic-generate --checkpoint models/best.pt --tokenizer other_tok.json",
         "300-token vocabulary"),
    case("tokenizer-missing", "gothic-generate --checkpoint models/best.pt --tokenizer none.json",
         "tokenizer not found"),
    case("tokenizer-is-checkpoint", "gothic-generate --checkpoint models/best.pt --tokenizer models/best.pt",
         "not a valid tokenizer.json"),
    # --- generate flags ---
    case("gen-no-checkpoint", "gothic-generate --tokenizer tok.json", "required: --checkpoint"),
    case("gen-device-bogus", f"{GEN} --checkpoint models/best.pt --device bogus", "--device 'bogus'", subprocess=True),
    case("gen-seed-overflow", f"{GEN} --checkpoint models/best.pt --seed 1180591620717411303424",
         "--seed must be between 0 and 4294967295", subprocess=True),
    case("gen-seed-negative", f"{GEN} --checkpoint models/best.pt --seed -1", "--seed must be between"),
    case("gen-max-tokens-0", f"{GEN} --checkpoint models/best.pt --max-tokens 0", "--max-tokens must be >= 1"),
    case("gen-max-tokens-negative", f"{GEN} --checkpoint models/best.pt --max-tokens -5", "--max-tokens"),
    case("gen-max-tokens-huge", f"{GEN} --checkpoint models/best.pt --max-tokens 1000000000000",
         "--max-tokens must be at most"),
    case("gen-max-tokens-word", f"{GEN} --checkpoint models/best.pt --max-tokens lots", "--max-tokens"),
    case("gen-num-samples-0", f"{GEN} --checkpoint models/best.pt --num-samples 0",
         "--num-samples must be between 1 and 65,536, got 0"),
    case("gen-num-samples-1e7", f"{GEN} --checkpoint models/best.pt --num-samples 10000000",
         "--num-samples must be between 1 and 65,536"),
    case("gen-temperature-nan", f"{GEN} --checkpoint models/best.pt --temperature nan", "--temperature"),
    case("gen-temperature-negative", f"{GEN} --checkpoint models/best.pt --temperature -1", "temperature"),
    case("gen-top-p-0", f"{GEN} --checkpoint models/best.pt --top-p 0", "top-p"),
    case("gen-top-k-negative", f"{GEN} --checkpoint models/best.pt --top-k -1", "top-k"),
    case("gen-chat-flag", f"{GEN} --checkpoint models/best.pt --topk 5", "unrecognized arguments: --topk"),
    # --- tokenizer training ---
    case("tok-output-under-file", f"{TOK} --output params.yaml/t.json", "cannot write params.yaml/t.json",
         subprocess=True),
    case("tok-files-missing", "gothic-tokenize --files nope.txt --output t.json", "nope.txt"),
    case("tok-vocab-tiny", "gothic-tokenize --files corpus.txt --vocab-size 10 --output t.json",
         "--vocab-size=10 must be >= 257"),
    case("tok-vocab-huge", "gothic-tokenize --files corpus.txt --vocab-size 99999999999 --output t.json",
         "--vocab-size=99999999999 must be <= 1048576"),
    case("tok-min-frequency-0", f"{TOK} --min-frequency 0 --output t.json", "--min-frequency=0 must be >= 1"),
    case("tok-output-is-folder", f"{TOK} --output bin", "cannot write bin: Is a directory"),
    case("tok-output-is-an-input", f"{TOK} --output corpus.txt", "--output corpus.txt is one of the --files"),
    case("prepare-nul-after-8k", "gothic-prepare --raw-dir raw_nul_late --sources raw --out-dir p1",
         "odd.txt: looks like a binary file", subprocess=True),
    case("prepare-link-to-device", "gothic-prepare --raw-dir raw_device --sources raw --out-dir p2",
         "zero.txt: not a regular file (a device or a pipe?)", subprocess=True),
    case("prepare-sparse-3gb", "gothic-prepare --raw-dir raw_sparse --sources raw --out-dir p3",
         "huge.txt: larger than 1 GiB", subprocess=True),
    case("prepare-duplicate-documents", "gothic-prepare --raw-dir raw_twins --sources raw --out-dir p4",
         "raw/Book.txt and raw/book.txt hold the same text; remove one of them", subprocess=True),
    case("prepare-into-raw", "gothic-prepare --raw-dir raw_device --sources raw --out-dir raw_device/out",
         "is inside raw_device/, so the next run would read its own output", subprocess=True),
    case("tok-output-over-a-checkpoint", f"{TOK} --output models/best.pt",
         "--output models/best.pt exists and is not a tokenizer.json"),
    case("tok-output-over-params", f"{TOK} --output params.yaml", "--output params.yaml exists and is not a tokenizer"),
    case("prepare-metrics-over-params", "gothic-prepare --raw-dir raw_twins --sources raw --out-dir p8 --metrics "
         "params.yaml", "--metrics params.yaml exists and is not a metrics JSON file", subprocess=True),
    case("prepare-into-a-users-folder", "gothic-prepare --raw-dir raw_device --sources raw --out-dir notes",
         "notes/train.txt exists and is not an earlier prepare's output", subprocess=True),
    case("tok-files-folder", "gothic-tokenize --files bin --output t.json", "bin"),
    case("tok-files-not-utf8", "gothic-tokenize --files models/best.pt --vocab-size 280 --output t.json",
         "valid UTF-8"),
    case("gen-tokenizer-folder", "gothic-generate --checkpoint models/best.pt --tokenizer bin", "bin"),
    case("train-tokenizer-folder", f"{TRAIN} --tokenizer bin", "bin"),
    case("chat-models-dir-file", "gothic-chat --models-dir a_file --tokenizer tok.json", "no checkpoints"),
    case("chat-tokenizer-missing", "gothic-chat --checkpoint models/best.pt --tokenizer none.json",
         "tokenizer not found"),
    case("tok-output-read-only", f"{TOK} --output ro/t.json", "Read-only file system", code=1,
         fault="readonly:{ws}/ro", subprocess=True),
    case("tok-disk-full", f"{TOK} --output tok.json", "tok.json: No space left on device", code=1,
         fault="full:tok.json"),
    # --- chat start-up ---
    case("chat-checkpoint-missing", "gothic-chat --checkpoint models/nope.pt --tokenizer tok.json", "nope.pt"),
    case("chat-no-models", "gothic-chat --models-dir bin --tokenizer tok.json", "bin"),
    case("chat-device-bogus", "gothic-chat --checkpoint models/best.pt --tokenizer tok.json --device bogus",
         "--device 'bogus'"),
    case("chat-seed-negative", "gothic-chat --checkpoint models/best.pt --tokenizer tok.json --seed -1", "--seed"),
    case("chat-temp-inf", "gothic-chat --checkpoint models/best.pt --tokenizer tok.json --temp inf", "--temp"),
    case("chat-max-huge", "gothic-chat --checkpoint models/best.pt --tokenizer tok.json --max 10000000000",
         "max tokens must be at most"),
    case("chat-checkpoint-evil", "gothic-chat --checkpoint bad/evil4.pt --tokenizer tok.json", "refused to load",
         subprocess=True),
    # --- a user's file names are shown escaped (gothic.errors.printable), never acted on by the terminal ---
    case("name-escapes-prepare", "gothic-prepare --raw-dir raw_escape --sources raw --out-dir p5",
         f"{ESCAPES_SHOWN}.txt: looks like a binary file", subprocess=True),
    case("name-newline-prepare", "gothic-prepare --raw-dir raw_newline --sources raw --out-dir p6",
         "two\\nlines.txt: looks like a binary file", subprocess=True),
    case("name-not-utf8-prepare", "gothic-prepare --raw-dir raw_not_utf8 --sources raw --out-dir p7",
         "\\xff\\xfe.txt: looks like a binary file", subprocess=True),
    case("name-escapes-checkpoint", f"{GEN} --checkpoint models/{ESCAPES}.pt", f"models/{ESCAPES_SHOWN}.pt"),
    case("name-escapes-chat", f"gothic-chat --checkpoint {ESCAPES}.pt --tokenizer tok.json", f"{ESCAPES_SHOWN}.pt"),
    case("name-escapes-tokenize", f"gothic-tokenize --files {ESCAPES}.txt --output t.json", ESCAPES_SHOWN),
    case("name-escapes-train-out-dir", f"{TRAIN} --out-dir a_file/{ESCAPES}",
         f"cannot write checkpoints to a_file/{ESCAPES_SHOWN}", code=1),
    case("name-escapes-export", f"gothic-export --checkpoint {ESCAPES}.pt --out-dir e1", ESCAPES_SHOWN,
         subprocess=True),
    case("name-escapes-stage", f"stages/evaluate.py {ESCAPES}.pt bin m.json d.json", ESCAPES_SHOWN),
]


def run_in_process(argv: list[str], ws: Path, fault: str | None, capsys, monkeypatch) -> tuple[int, str, str]:
    from gothic import cli

    mains = {"gothic-tokenize": cli.tokenize_main, "gothic-train": cli.train_main,
             "gothic-generate": cli.generate_main, "gothic-chat": cli.chat_main}
    monkeypatch.chdir(ws)
    monkeypatch.setenv("COLUMNS", "300")
    if fault:
        for owner, name, replacement in gothic_faults.patches(fault.format(ws=ws)):
            monkeypatch.setattr(owner, name, replacement)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        mains[argv[0]](argv[1:])
    monkeypatch.undo()
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clean_line(ws, bad: Case, capsys, monkeypatch):
    argv = [a.format(ws=ws) for a in bad.argv]
    cwd = ws
    if bad.id == "stage-empty-params":  # a stage reads ./params.yaml: give it an empty one of its own
        cwd = ws / "stage"
        cwd.mkdir(exist_ok=True)
        (cwd / "params.yaml").write_text("", encoding="utf-8")
    before = snapshot(ws)
    if bad.subprocess or argv[0].startswith("stages/"):
        command = [sys.executable, str(ROOT / argv[0])] if argv[0].startswith("stages/") else [str(BIN / argv[0])]
        proc = run(command + argv[1:], cwd, bad.fault)
        code, out, err = proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    else:
        code, out, err = run_in_process(argv, cwd, bad.fault, capsys, monkeypatch)
    assert "Traceback" not in out + err, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert not UNPRINTABLE.search(err[:-1]), f"a control character reached the terminal: {err!r}"
    assert bad.message in err, err
    assert code == bad.code, err
    after = snapshot(ws)
    assert {n: after.get(n) for n in before if n not in bad.may_change} == \
        {n: h for n, h in before.items() if n not in bad.may_change}, "a file that was there changed"
    assert not [name for name in after if name.endswith(".tmp")], "a temporary file was left behind"


# --- the chat survives every bad line and says what was wrong in one line ----------------------

CHAT_LINES = [
    (b"caf\xe9 au lait", "not valid UTF-8"),
    (b"/temp warm", "temperature must be a number"),
    (b"/temp nan", "temperature must be >= 0"),
    (b"/temp -1", "temperature must be >= 0"),
    (b"/topk x", "top-k must be a whole number"),
    (b"/topp 2", "top-p must be in (0, 1]"),
    (b"/max 0", "max tokens must be >= 1"),
    (b"/max 99999999999", "max tokens must be at most"),
    (b"/seed -5", "seed must be between 0 and 4294967295"),
    (b"/seed 99999999999", "seed must be between 0 and 4294967295"),
    (b"/seed \xff", "seed must be a whole number"),
    (b"/model nope", "no checkpoint 'nope'"),
    (b"/model tok.json", "not a checkpoint"),
    (b"/model bad/evil4.pt", "refused to load"),
    (b"/model bad/vocab_huge.pt", "vocab_size 1000000000"),
    (b"/models extra", "takes no argument"),
    (b"/reset now", "takes no argument"),
    (b"/frobnicate", "unknown command /frobnicate"),
    (b"/tmep 1", "did you mean /temp?"),
    (b"/save ../escape.md", "give a file name inside"),
    (b"/help nosuch", "unknown command /nosuch"),
]


def test_chat_survives_bad_lines(ws):
    """Non-UTF-8 text, bad values and unknown commands: one line each, and the chat goes on."""
    before = snapshot(ws)
    lines = b"\n".join(line for line, _ in CHAT_LINES) + b"\n/quit\n"
    proc = run([str(BIN / "gothic-chat"), "--checkpoint", "models/best.pt", "--tokenizer", "tok.json",
                "--device", "cpu", "--max", "3", "--seed", "1"], ws, stdin=lines)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == 0 and "Traceback" not in out + err and err == "", err
    missing = [expected for _, expected in CHAT_LINES if expected not in out]
    assert not missing, out
    assert out.rstrip().endswith("farewell.")
    after = snapshot(ws)
    assert {name: after.get(name) for name in before} == before


def test_generate_reads_a_latin1_prompt(ws):
    """`gothic-generate --prompt $'caf\\xe9'` used to die in the tokenizer; now é is read as Latin-1."""
    proc = run([str(BIN / "gothic-generate"), "--checkpoint", "models/best.pt", "--tokenizer", "tok.json",
                "--device", "cpu", "--max-tokens", "3", "--seed", "1", "--prompt", os.fsdecode(b"caf\xe9")], ws)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert proc.stdout.decode().startswith("café") and err.count("\n") == 1 and "not valid UTF-8" in err


def test_generate_into_a_closed_pipe_stops_quietly(ws):
    """`gothic-generate ... | head -c 10`: the reader leaves early; no BrokenPipeError traceback."""
    env = venv_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([str(BIN / "gothic-generate"), "--checkpoint", "models/best.pt", "--tokenizer",
                             "tok.json", "--device", "cpu", "--max-tokens", "20000", "--num-samples", "5"],
                            cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err
