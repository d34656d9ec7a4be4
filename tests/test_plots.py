"""Charts that open offline: PNG and self-contained HTML from Vega-Lite specs (gothic.plots), DVC's own
specs for `make plots`, and the dvc wrapper that keeps a first run free of expected warnings."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from gothic.dvc_run import CHECKOUT_LOGGERS, not_yet_created
from gothic.plots import HEIGHT, WIDTH, file_name, loss_curve_spec, render

from conftest import ROOT, committed_text, git_init, has_dvc, venv_env

HISTORY = {"train": [{"step": s, "train_loss": 6.0 - s / 5, "lr": 1e-3} for s in range(1, 11)],
           "val": [{"step": 5, "val_loss": 5.2}, {"step": 10, "val_loss": 4.4}]}


def assert_real_png(path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
        image.verify()  # every chunk decodes
    with Image.open(path) as image:
        low, high = image.convert("L").getextrema()
        assert high - low > 100, f"{path} is blank"


def test_a_chart_renders_to_a_real_png_of_the_chart_size_and_an_offline_page(tmp_path):
    png = render(loss_curve_spec(HISTORY), tmp_path, "loss")
    assert png == tmp_path / "loss.png"
    assert_real_png(png)
    page = (tmp_path / "loss.html").read_text()
    assert "<script" in page and "vegaEmbed" in page
    assert "cdn.jsdelivr" not in page and 'src="http' not in page  # the charting scripts are inlined


def test_no_history_is_no_chart_and_titles_become_file_names():
    assert loss_curve_spec({"train": [], "val": []}) is None
    assert file_name("Learning rate") == "learning_rate" and file_name("Held-out bits per byte") == \
        "held_out_bits_per_byte"


def test_the_dvc_wrapper_drops_only_the_first_run_warning():
    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord(CHECKOUT_LOGGERS[0], logging.WARNING, __file__, 1, msg, ("/repo/models",), None)

    assert not not_yet_created(record("No file hash info found for '%s'. It won't be created."))
    assert not_yet_created(record("Checkout failed for '%s'"))


TSVS = {"train_loss.tsv": "step\ttrain_loss\n1\t6.0\n2\t5.1\n3\t4.6\n",
        "val_loss.tsv": "step\tval_loss\n3\t4.9\n",
        "learning_rate.tsv": "step\tlr\n1\t0.001\n2\t0.002\n3\t0.001\n"}


@pytest.mark.dvc
@pytest.mark.skipif(not has_dvc() or shutil.which("git") is None, reason="needs dvc and git")
def test_make_plots_renders_every_chart_of_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text(committed_text("dvc.yaml"))
    git_init(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=venv_env())
    plots = tmp_path / "metrics" / "train_plots"
    plots.mkdir(parents=True)
    for name, text in TSVS.items():
        (plots / name).write_text(text)
    (tmp_path / "metrics" / "eval.json").write_text(
        '{"bits_per_byte": 2.0, "documents": [{"name": "Dracula", "bits_per_byte": 1.9}, '
        '{"name": "Carmilla", "bits_per_byte": 2.1}]}')
    proc = subprocess.run([sys.executable, "-m", "gothic.plots", "out"], cwd=tmp_path, capture_output=True, text=True,
                          env=venv_env())
    assert proc.returncode == 0, proc.stderr
    for name in ("loss", "learning_rate", "held_out_bits_per_byte"):
        assert_real_png(tmp_path / "out" / f"{name}.png")
        assert (tmp_path / "out" / f"{name}.html").stat().st_size > 100_000
    assert 'src="loss.png"' in (tmp_path / "out" / "index.html").read_text()


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_fits_80_columns():
    proc = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) >= 10 and max(map(len, lines)) <= 80, proc.stdout
