"""`make compare`: one column per experiment, in groups that fit the terminal (80 and 120 columns)."""

from __future__ import annotations

import csv
import io

import pytest
from rich.console import Console

from gothic.compare import VALUE_WIDTH, print_tables, read_columns
from gothic.errors import GothicError

METRICS = ("best_val_loss", "val_loss", "perplexity", "bits_per_byte", "distinct_2", "repeated_4gram_rate")
SAME = {"prepare.sources": "['builtin', 'raw']", "model.n_layer": "4", "train.dtype": "bfloat16"}
PROMPTS = "['The night was', 'In the shadow of the castle']"


def exp_show_csv(n_experiments: int) -> str:
    """What `dvc exp show --csv` prints (rev and typ kept): the workspace, the commit, then experiments."""
    rows = []
    for i in range(n_experiments):
        figures = dict(zip(METRICS, (f"{5 - i / 10:.4g}", f"{5.1 - i / 10:.4g}", f"{150 - i:.4g}",
                                     f"{2.1 - i / 100:.4g}", "0.9", "0"), strict=True))
        params = {**SAME, "train.seed": str(1000 + i), "model.n_embd": str(128 * (1 + i % 2)),
                  "sample.prompts": PROMPTS if i % 3 else "['Castle']"}
        rows.append({"Experiment": f"exp-{i}-run", "rev": f"{i:07x}", "typ": "branch_commit", "State": "",
                     **figures, **params})
    workspace = {**rows[0], "Experiment": "", "rev": "workspace", "typ": "baseline"}
    never_run = {**{k: "!" for k in rows[0]}, **SAME, "Experiment": "", "rev": "main", "typ": "baseline",
                 "State": "", "train.seed": "1337", "model.n_embd": "512", "sample.prompts": PROMPTS}
    failed = {**never_run, "Experiment": "broken", "rev": "fffffff", "typ": "branch_commit", "State": "Failed"}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows([workspace, never_run, *rows, failed])
    return out.getvalue()


def screen(n_experiments: int, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    print_tables(*read_columns(exp_show_csv(n_experiments)), console)
    return console.file.getvalue()


@pytest.mark.parametrize("width", [80, 120])
def test_every_line_fits_and_every_experiment_and_difference_shows(width):
    text = screen(8, width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    for i in range(8):
        assert f"exp-{i}-run" in text
    for label in ("train.seed", "model.n_embd", "sample.prompts", *METRICS):
        assert any(line.startswith(label) for line in lines), label
    assert not any(line.startswith(tuple(SAME)) for line in lines)  # the same everywhere: not a difference
    assert "workspace: the same as exp-0-run" in text and "main: no results (not run here)" in text
    assert "broken: no results (its run failed)" in text and "fffffff" not in text
    assert "2.03" in text and "1007" in text  # the last experiment's figures are there, not cut off


def test_narrower_terminals_get_more_groups_of_columns():
    groups = {width: screen(8, width).count("best_val_loss") for width in (80, 120, 400)}
    assert groups[80] > groups[120] > groups[400] == 1


def test_a_long_value_folds_inside_its_column():
    text = screen(2, 80)
    prompts_rows = text[text.index("sample.prompts"):].splitlines()[:3]
    assert [row.split("  ")[-1].strip() for row in prompts_rows] == ["['The night was', 'In", "the shadow of the",
                                                                    "castle']"]
    assert all(len(row.split("  ")[-1].strip()) <= VALUE_WIDTH for row in prompts_rows)


def test_no_results_yet_is_one_clear_error():
    text = exp_show_csv(1).splitlines()
    only_commit = "\n".join([text[0], text[2]])  # the header and the never-run commit
    with pytest.raises(GothicError, match="no experiment has results yet"):
        print_tables(*read_columns(only_commit), Console(file=io.StringIO()))


def test_nested_metrics_are_metrics_and_only_params_yaml_sections_are_params():
    text = ("Experiment,rev,typ,State,parent,bits_per_byte,extra.base_val.bits_per_byte,train.seed,evaluate.extra\n"
            "ft,abc,branch_commit,,,7.6,7.4,5,[data/heldout/base_val.txt]\n")
    _, metrics, params = read_columns(text)
    assert metrics == ["bits_per_byte", "extra.base_val.bits_per_byte"]
    assert params == ["train.seed", "evaluate.extra"]
