"""The run folder: which run a checkpoint belongs to, continuing, finishing, repairing, locking, divergence."""

from __future__ import annotations

import importlib
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gothic.checkpoint import load_checkpoint
from gothic.errors import GothicError
from gothic.files import sha256_file
from gothic.loading import load_model
from gothic.model import GPT
from gothic.rundir import RunDirLock
from gothic.runlog import TrainHooks
from gothic.train import train

from conftest import ROOT, tiny_model_config, tiny_train_config, venv_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(bins: Path, tokenizer: Path, out_dir: Path, publish_dir: Path | None = None, on_step=None,
        log: list | None = None, model: dict | None = None, **train_overrides):
    return train(tiny_model_config(**(model or {})), tiny_train_config(**train_overrides), bins, tokenizer, out_dir,
                 publish_dir=publish_dir,
                 hooks=TrainHooks(log=log.append if log is not None else None, on_step=on_step))


def never(step: int) -> None:
    raise AssertionError(f"trained step {step}; nothing was left to train")


def test_a_complete_run_is_not_trained_again_and_its_metrics_stay(train_bins, tiny_tokenizer_path, tmp_path):
    first = run(train_bins, tiny_tokenizer_path, tmp_path / "ckpt")
    before = {p.name: sha256_file(p) for p in (tmp_path / "ckpt").glob("*.pt")}
    log: list[str] = []
    again = run(train_bins, tiny_tokenizer_path, tmp_path / "ckpt", on_step=never, log=log)
    assert again.metrics == first.metrics and again.history == first.history
    assert {p.name: sha256_file(p) for p in (tmp_path / "ckpt").glob("*.pt")} == before
    assert any("complete at step 12; nothing to train" in line for line in log)


def test_publish_copies_a_complete_run_and_nothing_of_a_stopped_one(train_bins, tiny_tokenizer_path, tmp_path):
    def stop_at_6(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(train_bins, tiny_tokenizer_path, tmp_path / "ckpt", tmp_path / "models", on_step=stop_at_6)
    assert not (tmp_path / "models").exists()
    run(train_bins, tiny_tokenizer_path, tmp_path / "ckpt", tmp_path / "models")
    for name in ("best.pt", "final.pt", "latest.pt"):
        assert sha256_file(tmp_path / "models" / name) == sha256_file(tmp_path / "ckpt" / name)
    assert load_checkpoint(tmp_path / "models" / "final.pt")["step"] == 12


def test_a_stop_between_latest_and_its_copies_is_repaired(train_bins, tiny_tokenizer_path, tmp_path):
    """kill -9 after the final latest.pt was written but before best.pt/final.pt were copied from it."""
    out = tmp_path / "ckpt"
    kept = tmp_path / "best_at_8.pt"

    def keep_best(step: int) -> None:
        if step == 9:
            shutil.copyfile(out / "best.pt", kept)
    run(train_bins, tiny_tokenizer_path, out, on_step=keep_best)
    latest = load_checkpoint(out / "latest.pt")
    assert latest["best_step"] == 12, "the last evaluation must be the best for this test"
    assert load_checkpoint(kept)["step"] == 8
    shutil.copyfile(kept, out / "best.pt")  # the copy that the kill prevented
    (out / "final.pt").unlink()
    log: list[str] = []
    run(train_bins, tiny_tokenizer_path, out, on_step=never, log=log)
    assert load_checkpoint(out / "best.pt")["step"] == 12 and load_checkpoint(out / "final.pt")["step"] == 12
    final, latest = load_checkpoint(out / "final.pt"), load_checkpoint(out / "latest.pt")
    assert "optimizer" not in final, "best/final hold no resume state"
    assert all(torch.equal(final["model"][k], v) for k, v in latest["model"].items())
    assert any("restored best.pt, final.pt from latest.pt" in line for line in log)


@pytest.mark.parametrize("change", [{"seed": 8}, {"learning_rate": 2.0e-2}, {"batch_size": 2}])
def test_another_run_starts_fresh_with_a_note_even_with_resume_true(train_bins, tiny_tokenizer_path, tmp_path,
                                                                   change):
    """resume: true left in params.yaml by an earlier experiment must not break the next one."""
    run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    log: list[str] = []
    result = run(train_bins, tiny_tokenizer_path, tmp_path, log=log, resume=True, max_iters=4, **change)
    fresh = run(train_bins, tiny_tokenizer_path, tmp_path / "fresh", max_iters=4, **change)
    assert result.metrics["best_val_loss"] == fresh.metrics["best_val_loss"]
    key, value = next(iter(change.items()))
    assert any(f"is another run (train.{key}" in line and "training this one from scratch" in line for line in log)


def test_another_model_shape_starts_fresh_too(train_bins, tiny_tokenizer_path, tmp_path):
    run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    log: list[str] = []
    run(train_bins, tiny_tokenizer_path, tmp_path, log=log, model={"n_layer": 3}, resume=True, max_iters=4)
    assert any("model.n_layer 2 -> 3" in line for line in log)
    model, _ = load_model(tmp_path / "final.pt")
    assert model.cfg.n_layer == 3


def test_auto_does_not_stretch_a_run_to_another_max_iters(train_bins, tiny_tokenizer_path, tmp_path):
    run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    log: list[str] = []
    result = run(train_bins, tiny_tokenizer_path, tmp_path, log=log, max_iters=8)
    fresh = run(train_bins, tiny_tokenizer_path, tmp_path / "fresh", max_iters=8)
    assert result.metrics["best_val_loss"] == fresh.metrics["best_val_loss"]
    assert any("train.resume: true continues it" in line for line in log)


def test_resume_false_starts_over(train_bins, tiny_tokenizer_path, tmp_path):
    steps: list[int] = []
    run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4, resume=False, on_step=steps.append)
    assert steps == [1, 2, 3, 4]


def test_a_busy_run_folder_is_refused_with_one_line(train_bins, tiny_tokenizer_path, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with RunDirLock(tmp_path), pytest.raises(GothicError, match=r"in use by another training run \(pid \d+\)"):
        run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)
    run(train_bins, tiny_tokenizer_path, tmp_path, max_iters=4)  # released: trains


def test_training_imports_on_a_platform_without_fcntl(monkeypatch):
    """Windows has no fcntl: gothic.train (and the lock it takes) must import there all the same."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` now raises ImportError, as on Windows
    import gothic

    for name in ("rundir", "train"):  # the package's attributes too, so later tests see the modules they had
        monkeypatch.delitem(sys.modules, f"gothic.{name}")
        monkeypatch.delattr(gothic, name)
    with pytest.raises(ImportError):
        import fcntl  # noqa: F401
    train_module = importlib.import_module("gothic.train")
    assert train_module.run_folder is importlib.import_module("gothic.rundir").run_folder  # which takes the lock


def test_the_lock_names_its_holder_and_is_released_with_it(tmp_path):
    holder = RunDirLock(tmp_path)
    with holder, pytest.raises(GothicError) as refused:
        with RunDirLock(tmp_path):
            pass
    assert str(refused.value) == (f"{tmp_path} is in use by another training run (pid {os.getpid()}); wait for it "
                                  "to finish, or give this one another folder (--out-dir)")
    with RunDirLock(tmp_path):  # released on exit
        pass


@pytest.mark.subprocess
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from pathlib import Path; from gothic.rundir import RunDirLock\n"
            "with RunDirLock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=venv_env())
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(GothicError, match=rf"\(pid {proc.pid}\)"):
            RunDirLock(tmp_path).__enter__()
    finally:
        proc.kill()
        proc.wait()
    with RunDirLock(tmp_path):  # the kernel released the dead process's lock
        pass


def test_divergence_stops_before_writing_and_keeps_the_last_good_checkpoints(train_bins, tiny_tokenizer_path,
                                                                            tmp_path, monkeypatch):
    poisoned = {"on": False}
    forward = GPT.forward

    def nan_after_step_4(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        return logits, (loss * float("nan") if poisoned["on"] and loss is not None else loss)

    def poison(step: int) -> None:
        poisoned["on"] = step >= 5
    monkeypatch.setattr(GPT, "forward", nan_after_step_4)
    with pytest.raises(GothicError, match=r"training diverged at step 6: the train loss is nan; the checkpoints in "
                                          r".* keep step 4\. Lower train.learning_rate"):
        run(train_bins, tiny_tokenizer_path, tmp_path, on_step=poison)
    for name in ("latest.pt", "best.pt"):
        model, info = load_model(tmp_path / name)
        assert info.step == 4 and all(torch.isfinite(p).all() for p in model.parameters())
    assert not (tmp_path / "final.pt").exists()


def test_resume_finds_this_run_in_the_published_folder_when_the_work_folder_holds_another(
        train_bins, tiny_tokenizer_path, tmp_path):
    """After `dvc exp apply A`, models/ holds A while checkpoints/ holds a later experiment B."""
    work, models = tmp_path / "checkpoints", tmp_path / "models"
    run(train_bins, tiny_tokenizer_path, work, models, max_iters=4)  # A, published
    run(train_bins, tiny_tokenizer_path, work, tmp_path / "elsewhere", max_iters=4, seed=8)  # B, in the work folder
    log: list[str] = []
    result = run(train_bins, tiny_tokenizer_path, work, models, log=log, max_iters=8, resume=True)
    assert any("resuming at step 4, to step 8" in line for line in log), log
    assert result.metrics["step"] == 8 and load_checkpoint(models / "final.pt")["step"] == 8


def test_a_published_run_that_fails_to_load_replaces_nothing_in_the_work_folder(train_bins, tiny_tokenizer_path,
                                                                                 tmp_path):
    """A run to continue is copied into the work folder only once its checkpoint has loaded: a damaged
    models/latest.pt is one line, and the work folder's checkpoint (another run's) stays as it was."""
    work, models = tmp_path / "checkpoints", tmp_path / "models"
    run(train_bins, tiny_tokenizer_path, work, models, max_iters=4)  # A, published
    run(train_bins, tiny_tokenizer_path, work, tmp_path / "elsewhere", max_iters=4, seed=8)  # B, in the work folder
    ckpt = torch.load(models / "latest.pt", weights_only=True)
    ckpt["optimizer"] = ckpt["optimizer"][:0]  # plans as A's checkpoint, fails to resume
    torch.save(ckpt, models / "latest.pt")
    before = sha256_file(work / "latest.pt")
    with pytest.raises(GothicError, match="optimizer"):
        run(train_bins, tiny_tokenizer_path, work, models, max_iters=8, resume=True)
    assert sha256_file(work / "latest.pt") == before


def test_a_read_only_publish_folder_is_found_before_any_step(train_bins, tiny_tokenizer_path, tmp_path,
                                                             monkeypatch):
    import errno
    import tempfile

    models = tmp_path / "models"
    models.mkdir()  # there from an earlier run, and read-only now
    real = tempfile.TemporaryFile

    def read_only_models(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == models:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only_models)
    steps: list[int] = []
    with pytest.raises(GothicError, match="cannot write checkpoints to .*models: Read-only file system"):
        run(train_bins, tiny_tokenizer_path, tmp_path / "ckpt", models, on_step=steps.append)
    assert steps == []


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_planted_link_at_the_lock_is_refused_and_its_target_untouched(train_bins, tiny_tokenizer_path, tmp_path,
                                                                       dangling):
    """A link at checkpoints/.lock would make training truncate its target and write a pid there."""
    work, target = tmp_path / "ckpt", tmp_path / "outside.txt"
    work.mkdir()
    if not dangling:
        target.write_text("precious\n", encoding="utf-8")
    (work / ".lock").symlink_to(target)
    with pytest.raises(GothicError, match=r"\.lock: is a symbolic link, and a run folder's lock is a plain file"):
        run(train_bins, tiny_tokenizer_path, work)
    assert (target.read_text(encoding="utf-8") == "precious\n") if not dangling else not target.exists()


# --- stopped runs kept aside (another experiment in the same workspace) -----------------------------

def stop_at(step_to_stop: int):
    def on_step(step: int) -> None:
        if step == step_to_stop:
            raise KeyboardInterrupt
    return on_step


def stopped(bins: Path, tokenizer: Path, work: Path, at: int = 6, **train_overrides) -> None:
    """A run stopped at step `at`, its latest.pt from the evaluation before (step 4, or 2 for at=3 with
    eval_interval 2)."""
    with pytest.raises(KeyboardInterrupt):
        run(bins, tokenizer, work, on_step=stop_at(at), **train_overrides)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def kept(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "stopped").iterdir()) if (work / "stopped").is_dir() else []


def test_another_run_keeps_a_stopped_run_aside_and_its_own_params_continue_it_exactly(train_bins,
                                                                                       tiny_tokenizer_path, tmp_path):
    work = tmp_path / "ckpt"
    stopped(train_bins, tiny_tokenizer_path, work)  # A, stopped after step 6 of 12: latest.pt at 4
    a_latest, a_best = sha256_file(work / "latest.pt"), sha256_file(work / "best.pt")
    log: list[str] = []
    run(train_bins, tiny_tokenizer_path, work, log=log, seed=8)  # B, to the end, in the same folder
    (folder,) = (work / "stopped").iterdir()
    assert log[0] == (f"train: {work / 'latest.pt'} is another run (train.seed 7 -> 8), stopped at step 4 of 12: "
                      f"kept in {folder} (its own params continue it from there)")
    assert sha256_file(folder / "latest.pt") == a_latest and sha256_file(folder / "best.pt") == a_best
    assert (folder / "logs").is_dir() and load_checkpoint(work / "final.pt")["train_config"]["seed"] == 8

    log.clear()
    steps: list[int] = []
    run(train_bins, tiny_tokenizer_path, work, log=log, on_step=steps.append)  # A's command again
    assert steps == list(range(5, 13)), "A continues from its step 4, not from scratch"
    assert any(f"bringing back this run, stopped at step 4 of 12, from {folder}" in line for line in log), log
    assert not folder.exists()
    run(train_bins, tiny_tokenizer_path, tmp_path / "straight")  # A never stopped
    for name in ("final.pt", "best.pt"):
        assert same_weights(work / name, tmp_path / "straight" / name), name


def test_the_same_run_to_another_max_iters_keeps_the_stopped_one_too(train_bins, tiny_tokenizer_path, tmp_path):
    """train.resume: auto does not stretch a run, and does not train over it either."""
    work = tmp_path / "ckpt"
    stopped(train_bins, tiny_tokenizer_path, work)
    log: list[str] = []
    run(train_bins, tiny_tokenizer_path, work, log=log, max_iters=8)
    assert any("(train.max_iters 12 -> 8), stopped at step 4 of 12: kept in" in line for line in log), log
    assert [name.split("-")[1] for name in kept(work)] == ["12"]
    steps: list[int] = []
    run(train_bins, tiny_tokenizer_path, work, on_step=steps.append)
    assert steps[0] == 5 and kept(work) == []


def test_at_most_three_stopped_runs_are_kept_and_the_oldest_is_dropped_with_a_line(train_bins, tiny_tokenizer_path,
                                                                                   tmp_path):
    work = tmp_path / "ckpt"
    names = []
    for seed in (1, 2, 3, 4):
        stopped(train_bins, tiny_tokenizer_path, work, at=3, max_iters=4, eval_interval=2, seed=seed)
        log: list[str] = []
        run(train_bins, tiny_tokenizer_path, work, log=log, max_iters=4, eval_interval=2, seed=seed + 10)  # A kept
        names.append(next(n for n in kept(work) if n not in names))
    assert kept(work) == sorted(names[1:])
    assert any(f"dropped the kept stopped run {work / 'stopped' / names[0]} (step 2 of 4): at most 3 are kept"
               in line for line in log), log


def test_resume_false_drops_this_runs_kept_checkpoint_and_keeps_the_others(train_bins, tiny_tokenizer_path,
                                                                          tmp_path):
    work = tmp_path / "ckpt"
    stopped(train_bins, tiny_tokenizer_path, work, at=3, max_iters=4, eval_interval=2)  # A
    stopped(train_bins, tiny_tokenizer_path, work, at=3, max_iters=4, eval_interval=2, seed=8)  # B: A kept
    (a_kept,) = kept(work)
    log: list[str] = []
    steps: list[int] = []
    run(train_bins, tiny_tokenizer_path, work, log=log, on_step=steps.append, max_iters=4, eval_interval=2,
        resume=False)  # A anew
    assert steps == [1, 2, 3, 4]
    assert any(f"dropped the kept stopped run {work / 'stopped' / a_kept} (step 2 of 4): train.resume: false" in line
               for line in log), log
    assert len(kept(work)) == 1 and kept(work) != [a_kept], "B, stopped in the folder, is kept aside"
    steps.clear()
    run(train_bins, tiny_tokenizer_path, work, on_step=steps.append, max_iters=4, eval_interval=2, seed=8)
    assert steps == [3, 4], "B's command continues B"


@pytest.mark.parametrize("planted", ["hard-link", "fifo"])
def test_a_lock_that_is_no_plain_file_of_its_own_is_refused(train_bins, tiny_tokenizer_path, tmp_path, planted):
    """A hard link at .lock would let training truncate a file elsewhere; a FIFO cannot hold a pid."""
    work, outside = tmp_path / "ckpt", tmp_path / "outside.txt"
    work.mkdir()
    outside.write_text("precious\n", encoding="utf-8")
    if planted == "hard-link":
        os.link(outside, work / ".lock")
    else:
        os.mkfifo(work / ".lock")
    refusal = r"\.lock: is (a hard link \(2 names|not a file \(a FIFO).*lock is a plain file"
    with pytest.raises(GothicError, match=refusal):
        run(train_bins, tiny_tokenizer_path, work)
    assert outside.read_text(encoding="utf-8") == "precious\n" and not (work / "latest.pt").exists()


def test_a_planted_link_at_the_kept_runs_folder_is_refused(train_bins, tiny_tokenizer_path, tmp_path):
    work, outside = tmp_path / "ckpt", tmp_path / "outside"
    stopped(train_bins, tiny_tokenizer_path, work)
    outside.mkdir()
    (work / "stopped").symlink_to(outside)
    before = sha256_file(work / "latest.pt")
    with pytest.raises(GothicError, match=r"stopped: is a symbolic link, and a stopped run is kept in a folder"):
        run(train_bins, tiny_tokenizer_path, work, seed=8)
    assert list(outside.iterdir()) == [] and sha256_file(work / "latest.pt") == before


@pytest.mark.parametrize("changed", ["tokenizer", "bins"])
def test_stage_publishes_nothing_when_its_inputs_changed_while_it_trained(train_bins, tiny_tokenizer_path, tmp_path,
                                                                         monkeypatch, changed):
    """A `dvc repro tokenize` (or binarize) in another shell while the stage trains: DVC would record the
    weights with files they were not trained on, so the stage publishes nothing and says why."""
    import yaml

    from gothic.config import to_dict

    bins, tokenizer = Path(shutil.copytree(train_bins, tmp_path / "bin")), tmp_path / "tokenizer.json"
    shutil.copy(tiny_tokenizer_path, tokenizer)
    params = {"model": to_dict(tiny_model_config()), "train": to_dict(tiny_train_config(max_iters=4))}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    stage = runpy.run_path(str(ROOT / "stages" / "train.py"))
    loop = stage["train"].__globals__
    session = loop["train_session"]
    target = tokenizer if changed == "tokenizer" else bins / "meta.json"

    def rebuild_an_input(run, hooks):
        session(run, hooks)
        target.write_text(target.read_text(encoding="utf-8") + " ", encoding="utf-8")
    monkeypatch.setitem(loop, "train_session", rebuild_an_input)
    args = (str(bins), str(tokenizer), "checkpoints", "models", "metrics/train.json", "metrics/train_plots")
    with pytest.raises(GothicError, match=rf"{target.name} changed while this run trained, so its checkpoints are not "
                                          "published"):
        stage["main"](*args)
    assert not (tmp_path / "models").exists() and (tmp_path / "checkpoints" / "final.pt").is_file()


def test_train_fields_added_later_leave_the_run_key_alone_at_their_defaults():
    """A latest.pt saved before schedule, ema, ... existed trained as their defaults do: the same run."""
    import dataclasses

    from gothic.config import ModelConfig, TrainConfig
    from gothic.rundir import ADDED_LATER, run_identity

    identity = run_identity(ModelConfig(), TrainConfig(), "bins")
    assert not set(ADDED_LATER) & set(identity["train"])
    changed = run_identity(ModelConfig(), dataclasses.replace(TrainConfig(), schedule="wsd"), "bins")
    assert changed["train"]["schedule"] == "wsd"
