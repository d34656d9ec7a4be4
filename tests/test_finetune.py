"""Fine-tuning (train.init_from): a base's weights, shape and tokenizer, read from a checkpoint or an export."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from test_train import assert_bitwise_equal, interrupt_by_signal, weights

from gothic.base import check_pipeline_base, load_base
from gothic.checkpoint import load_checkpoint, read_info, save_checkpoint
from gothic.config import to_dict
from gothic.data import binarize, load_training_data
from gothic.errors import GothicError
from gothic.export import export_checkpoint
from gothic.loading import load_model
from gothic.rundir import run_key
from gothic.runlog import TrainHooks
from gothic.runtime import resolve_precision
from gothic.tokenizer import EOT, save_tokenizer, train_tokenizer
from gothic.train import estimate_loss, train

from conftest import GENERATION_TEXT, TINY_TEXT, tiny_model_config, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEW_BOOK = "Dear Margaret, the letters came on Tuesday; the garden is cold and the roses are late this year.\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory, train_bins, tiny_tokenizer_path) -> Path:
    """A trained base: models/best.pt, final.pt, latest.pt of a 12-step run."""
    out = tmp_path_factory.mktemp("base") / "models"
    train(tiny_model_config(), tiny_train_config(), train_bins, tiny_tokenizer_path, out)
    return out


@pytest.fixture(scope="module")
def new_bins(tmp_path_factory, tiny_tokenizer_path) -> Path:
    """Other books, encoded with the base's tokenizer."""
    folder = tmp_path_factory.mktemp("new_books")
    (folder / "processed").mkdir()
    (folder / "processed" / "train.txt").write_text((NEW_BOOK * 40 + EOT) * 2, encoding="utf-8")
    (folder / "processed" / "val.txt").write_text(NEW_BOOK.upper() * 6 + NEW_BOOK * 6, encoding="utf-8")
    binarize(folder / "processed", tiny_tokenizer_path, folder / "bin")
    return folder / "bin"


def finetune_config(base_path: Path, **overrides):
    return tiny_train_config(init_from=str(base_path), learning_rate=3e-3, **overrides)


def test_first_val_row_is_the_base_loss_on_the_new_books(base, new_bins, tiny_tokenizer_path, tmp_path):
    result = train(tiny_model_config(), finetune_config(base / "best.pt"), new_bins, tiny_tokenizer_path, tmp_path)
    model, _ = load_model(base / "best.pt")
    data = load_training_data(new_bins, tiny_tokenizer_path, 32)
    cfg = tiny_train_config()
    expected = estimate_loss(model.train(), data.val, cfg.batch_size, cfg.eval_iters, cfg.seed,
                             resolve_precision("float32", torch.device("cpu")))
    first = result.history["val"][0]
    assert first["step"] == 0 and first["val_loss"] == expected
    final = load_checkpoint(tmp_path / "final.pt")
    assert final["tokenizer"] == (tiny_tokenizer_path.read_text(encoding="utf-8"))
    assert final["run_identity"]["base"] == load_base(base / "best.pt").weights_sha256
    assert final["best_val_loss"] < expected  # it learned the new books
    assert not torch.equal(weights(tmp_path / "final.pt")["wte.weight"], weights(base / "best.pt")["wte.weight"])


def test_an_export_folder_is_the_same_base_as_its_checkpoint(base, new_bins, tiny_tokenizer_path, tmp_path):
    pytest.importorskip("safetensors")
    export_checkpoint(base / "best.pt", tmp_path / "export", verify=False)
    from_export, from_checkpoint = load_base(tmp_path / "export"), load_base(base / "best.pt")
    assert from_export.weights_sha256 == from_checkpoint.weights_sha256
    assert from_export.tokenizer_json == from_checkpoint.tokenizer_json
    assert (tmp_path / "export" / "tokenizer.json").read_bytes() == tiny_tokenizer_path.read_bytes()
    a = train(tiny_model_config(), finetune_config(tmp_path / "export"), new_bins, tiny_tokenizer_path, tmp_path / "a")
    b = train(tiny_model_config(), finetune_config(base / "best.pt"), new_bins, tiny_tokenizer_path, tmp_path / "b")
    assert a.history["val"] == b.history["val"]  # the same run: same key, same weights
    assert_bitwise_equal(weights(tmp_path / "a" / "final.pt"), weights(tmp_path / "b" / "final.pt"))


def test_the_shape_comes_from_the_base_with_a_note(base, new_bins, tiny_tokenizer_path, tmp_path):
    lines = []
    train(tiny_model_config(n_layer=4, n_embd=64, dropout=0.1), finetune_config(base / "best.pt", max_iters=2),
          new_bins, tiny_tokenizer_path, tmp_path, hooks=TrainHooks(log=lines.append))
    note = next(line for line in lines if "comes from the base" in line)
    assert "model.n_layer 4 -> 2" in note and "model.n_embd 64 -> 32" in note and "dropout" not in note
    saved = load_checkpoint(tmp_path / "final.pt")["model_config"]
    assert saved["n_layer"] == 2 and saved["n_embd"] == 32 and saved["dropout"] == 0.1  # dropout is the run's


def test_a_stopped_fine_tune_continues_bit_for_bit(base, new_bins, tiny_tokenizer_path, tmp_path):
    cfg = finetune_config(base / "best.pt")
    train(tiny_model_config(), cfg, new_bins, tiny_tokenizer_path, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model_config(), cfg, new_bins, tiny_tokenizer_path, tmp_path / "stopped",
              hooks=TrainHooks(on_step=interrupt_by_signal(6)))
    resumed = train(tiny_model_config(), cfg, new_bins, tiny_tokenizer_path, tmp_path / "stopped")
    assert_bitwise_equal(weights(tmp_path / "straight" / "final.pt"), weights(tmp_path / "stopped" / "final.pt"))
    assert [r["step"] for r in resumed.history["val"]] == [0, 4, 8, 12]


def test_another_base_starts_a_fresh_run_with_a_note(base, train_bins, new_bins, tiny_tokenizer_path, tmp_path):
    train(tiny_model_config(), tiny_train_config(seed=8, max_iters=4), train_bins, tiny_tokenizer_path,
          tmp_path / "other_base")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model_config(), finetune_config(base / "best.pt", max_iters=8), new_bins, tiny_tokenizer_path,
              tmp_path / "run", hooks=TrainHooks(on_step=interrupt_by_signal(3)))
    first_key = run_key(read_info(tmp_path / "run" / "latest.pt").run_identity)
    lines = []
    train(tiny_model_config(), finetune_config(tmp_path / "other_base" / "best.pt", max_iters=8), new_bins,
          tiny_tokenizer_path, tmp_path / "run", hooks=TrainHooks(log=lines.append))
    assert any("another base (train.init_from)" in line for line in lines)
    assert run_key(read_info(tmp_path / "run" / "latest.pt").run_identity) != first_key


@pytest.fixture(scope="module")
def bad_bases(tmp_path_factory, base, tiny_tokenizer_path) -> Path:
    root = tmp_path_factory.mktemp("bad_bases")
    (root / "truncated.pt").write_bytes((base / "best.pt").read_bytes()[:500])
    (root / "notes").mkdir()
    (root / "notes" / "a.txt").write_text("hello", encoding="utf-8")
    ckpt = load_checkpoint(base / "best.pt")
    save_checkpoint(root / "format1.pt", {**{k: v for k, v in ckpt.items() if k not in ("tokenizer", "format_version",
                                                                                           "weights_sha256")}})
    export_checkpoint(base / "best.pt", root / "export", verify=False)
    shutil.copytree(root / "export", root / "export_no_tokenizer")
    (root / "export_no_tokenizer" / "tokenizer.json").unlink()
    return root


@pytest.mark.parametrize("name, message", [
    ("missing.pt", "does not exist"),
    ("truncated.pt", "cannot be read"),
    ("notes", "is not a gothic checkpoint or export folder"),
    ("format1.pt", "carries no tokenizer"),
    ("export_no_tokenizer", "is an export without tokenizer.json"),
])
def test_a_bad_base_is_one_line_and_nothing_is_written(bad_bases, new_bins, tiny_tokenizer_path, tmp_path, name,
                                                       message):
    pytest.importorskip("safetensors")
    with pytest.raises(GothicError, match=message):
        train(tiny_model_config(), finetune_config(bad_bases / name), new_bins, tiny_tokenizer_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bins_of_another_tokenizer_are_refused(base, tiny_tokenizer_path, tmp_path):
    other = tmp_path / "other.json"
    (tmp_path / "corpus.txt").write_text((NEW_BOOK + GENERATION_TEXT.upper()) * 20, encoding="utf-8")
    save_tokenizer(train_tokenizer([tmp_path / "corpus.txt"], 300, 1), other)  # same size, other merges
    (tmp_path / "processed").mkdir()
    for split in ("train", "val"):
        (tmp_path / "processed" / f"{split}.txt").write_text(GENERATION_TEXT * 30, encoding="utf-8")
    binarize(tmp_path / "processed", other, tmp_path / "bin")
    with pytest.raises(GothicError, match=r"is not the tokenizer .*best.pt was trained with \(sha256 \w+\): encode"):
        train(tiny_model_config(), finetune_config(base / "best.pt"), tmp_path / "bin", other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_base_whose_context_the_new_books_cannot_fill_is_refused(base, tiny_tokenizer_path, tmp_path):
    (tmp_path / "processed").mkdir()
    (tmp_path / "processed" / "train.txt").write_text(TINY_TEXT * 20, encoding="utf-8")
    (tmp_path / "processed" / "val.txt").write_text("Short.", encoding="utf-8")
    binarize(tmp_path / "processed", tiny_tokenizer_path, tmp_path / "bin")
    with pytest.raises(GothicError, match=r"cannot fill one window of model.block_size=32 .*a base's context cannot"):
        train(tiny_model_config(block_size=8), finetune_config(base / "best.pt"), tmp_path / "bin",
              tiny_tokenizer_path, tmp_path / "out")


def test_resume_true_of_another_run_is_refused(base, new_bins, tiny_tokenizer_path, tmp_path):
    shutil.copytree(base, tmp_path / "work")  # the base run's own latest.pt: another run
    with pytest.raises(GothicError, match="train.resume: true continues a run, but .*is another run"):
        train(tiny_model_config(), finetune_config(base / "best.pt", resume=True), new_bins, tiny_tokenizer_path,
              tmp_path / "work")


def test_the_pipeline_takes_a_base_only_from_data_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_pipeline_base("")
    check_pipeline_base("data/base/best.pt")
    check_pipeline_base("data/base/export")
    with pytest.raises(GothicError, match="train.init_from: models/best.pt is outside data/base/"):
        check_pipeline_base("models/best.pt")
    with pytest.raises(GothicError, match="outside data/base/"):
        check_pipeline_base("data/base/../../elsewhere.pt")


def test_exported_config_records_the_gothic_model_config(base, tmp_path):
    pytest.importorskip("safetensors")
    export_checkpoint(base / "best.pt", tmp_path / "export", verify=False)
    import json

    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["gothic_model_config"] == to_dict(dataclasses.replace(tiny_model_config()))


def test_the_seed_cli_fine_tunes_a_base_on_text_files(base, tiny_tokenizer_path, tmp_path, monkeypatch, capsys):
    from gothic.cli import train_main

    monkeypatch.chdir(tmp_path)  # no params.yaml: the built-in defaults, and the base's shape
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.txt").write_text(NEW_BOOK * 60, encoding="utf-8")
    (tmp_path / "mine" / "val.txt").write_text(NEW_BOOK.upper() * 10, encoding="utf-8")
    settings = ("train.eval_iters=2", "train.eval_interval=2", "train.dtype=float32", "train.device=cpu",
                "train.warmup_iters=1")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--init-from", str(base / "best.pt"), "--data-dir", "mine", "--out-dir", "ft", "--max-iters", "4",
                    "--batch-size", "2", "--grad-accum", "1", *[a for kv in settings for a in ("--set", kv)]])
    assert exit_info.value.code == 0
    assert (tmp_path / "ft" / "tokenizer.json").read_bytes() == tiny_tokenizer_path.read_bytes()
    final = load_checkpoint(tmp_path / "ft" / "final.pt")
    assert final["step"] == 4 and final["history"]["val"][0]["step"] == 0
    assert final["model_config"]["n_embd"] == 32  # the base's, not the built-in 512
    out = capsys.readouterr().out
    assert "the model's shape comes from the base" in out and f"fine-tuning {base / 'best.pt'}, to step 4" in out


def test_evaluate_extra_scores_held_out_text_like_the_val_split(base, train_bins, tmp_path):
    from gothic.config import EvaluateConfig
    from gothic.evaluate import evaluate_checkpoint

    (tmp_path / "heldout").mkdir()
    (tmp_path / "heldout" / "same_as_val.txt").write_text(TINY_TEXT * 10, encoding="utf-8")
    (tmp_path / "heldout" / "two_docs.txt").write_text(NEW_BOOK * 5 + EOT + TINY_TEXT * 5, encoding="utf-8")
    cfg = EvaluateConfig(device="cpu", extra=[str(tmp_path / "heldout" / "same_as_val.txt"),
                                              str(tmp_path / "heldout" / "two_docs.txt")])
    metrics = evaluate_checkpoint(base / "best.pt", train_bins, cfg)
    extra = metrics["extra"]
    assert set(extra) == {"same_as_val", "two_docs"}
    assert extra["same_as_val"]["bits_per_byte"] == pytest.approx(metrics["bits_per_byte"], rel=0.02)
    assert extra["two_docs"]["bits_per_byte"] > extra["same_as_val"]["bits_per_byte"]  # half of it is new text
    with pytest.raises(GothicError, match="evaluate.extra: .*missing.txt does not exist"):
        evaluate_checkpoint(base / "best.pt", train_bins,
                            EvaluateConfig(device="cpu", extra=[str(tmp_path / "missing.txt")]))


def test_a_fine_tunes_model_card_names_its_base(base, new_bins, tiny_tokenizer_path, tmp_path):
    pytest.importorskip("safetensors")
    train(tiny_model_config(), finetune_config(base / "best.pt", max_iters=2), new_bins, tiny_tokenizer_path,
          tmp_path / "ft")
    export_checkpoint(tmp_path / "ft" / "best.pt", tmp_path / "export", verify=False)
    card = (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    sha = load_base(base / "best.pt").weights_sha256
    assert f"| fine-tuned from | `{base / 'best.pt'}` (weights sha256 {sha[:12]}) |" in card


def test_a_fine_tunes_weight_average_starts_from_the_base(base, new_bins, tiny_tokenizer_path, tmp_path):
    """With train.ema the step-0 row scores the average: it must be the base's weights, not random ones."""
    plain = train(tiny_model_config(), finetune_config(base / "best.pt", max_iters=2), new_bins, tiny_tokenizer_path,
                  tmp_path / "plain")
    averaged = train(tiny_model_config(), finetune_config(base / "best.pt", max_iters=2, ema=0.9), new_bins,
                     tiny_tokenizer_path, tmp_path / "ema")
    assert averaged.history["val"][0] == plain.history["val"][0]
