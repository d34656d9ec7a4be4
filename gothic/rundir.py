"""The training run's folder: who owns it, which run its checkpoints belong to, what to publish.

Training works in one folder (`checkpoints/` by default, the seed's name): latest.pt at every
evaluation, best.pt, final.pt and logs/. The DVC stage keeps that folder outside every DVC output,
because `dvc exp run` resets its outputs to the last commit before it runs: a checkpoint kept there
would be deleted, or swapped for an older run's. When a run is complete, its checkpoints are
published (copied) into the stage's output, `models/`, which DVC versions per experiment.

Every checkpoint carries a run key: a hash of everything that shapes the training trajectory (the
model, the optimizer and schedule settings, the seed, the exact bins), but not `max_iters` and not
what only observes or places the run (evaluation and logging intervals, device, compile). So the
decision of what to do with a folder's latest.pt is exact:

- `train.resume: auto` (the default) continues only this very run (same key, same max_iters):
  stopping and continuing gives the same weights as never stopping, so nothing is lost or changed.
  A complete run is not trained again: its checkpoints are checked and published.
- `train.resume: true` also continues this run to another max_iters (the learning rate then
  continues smoothly from where it was, see gothic.optim.get_lr). With no checkpoint at all it is
  an error that says how to get one; a checkpoint of another run starts this one fresh, with a note.
- `train.resume: false` starts fresh whatever is there (dropping this run's own stopped checkpoint).

A stopped run is never trained over by another: a session that will not continue the folder's
stopped run first moves it to stopped/<run key>-<max_iters>/ (at most KEEP_STOPPED kept, the
oldest dropped), and a session of a kept run brings it back to continue it (settle_stopped_runs).

`run_folder` is a training session's whole use of the folder: checked and locked, the start
planned, a continued run adopted and its copies repaired (once it loaded), a complete run published.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as torch_dist
from filelock import FileLock, Timeout

from gothic.checkpoint import CheckpointInfo, TrainingCheckpoint, read_info
from gothic.config import DROPOUT_KEYS, ModelConfig, TrainConfig, to_dict
from gothic.errors import GothicError
from gothic.files import WriteError, atomic_path, remove_stale_temps, sha256_file

# train.* fields that do not change the trajectory: a run may continue with other values of these
NOT_IN_RUN_KEY = ("max_iters", "eval_interval", "eval_iters", "log_interval", "compile", "device", "resume",
                  "micro_batch", "init_from")  # init_from: a base is known by its weights' hash, not its path
# train.* fields that came after run keys did: at their defaults they are left out of the key, so a run
# saved before they existed (which trained as the default does) is still the same run and continues
ADDED_LATER = ("schedule", "decay_frac", "ema", "sampling")
LOCK_NAME = ".lock"
PUBLISHED = ("best.pt", "final.pt", "latest.pt")


def run_identity(model_cfg: ModelConfig, train_cfg: TrainConfig, data_fingerprint: str,
                 base_sha256: str | None = None) -> dict:
    """The settings that define a run's trajectory, as plain values (dropout's two excepted: they may change);
    a fine-tune adds its base's weights hash (gothic.base), a run from scratch has no "base" key."""
    model = {k: v for k, v in to_dict(model_cfg).items() if k not in DROPOUT_KEYS}
    train = {k: v for k, v in to_dict(train_cfg).items() if k not in NOT_IN_RUN_KEY
             and not (k in ADDED_LATER and v == getattr(TrainConfig(), k))}
    return {"model": model, "train": train, "data": data_fingerprint} | ({"base": base_sha256} if base_sha256 else {})


def run_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def describe_difference(saved: dict, wanted: dict) -> str:
    """'train.seed 5 -> 6; data changed': how the checkpoint's run differs from the params' run."""
    diffs = []
    for section in ("model", "train"):
        old, new = saved.get(section, {}), wanted[section]
        diffs += [f"{section}.{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    if saved.get("data") != wanted.get("data"):
        diffs.append("the token bins changed")
    if saved.get("base") != wanted.get("base"):
        diffs.append("another base (train.init_from)" if wanted.get("base") else "not fine-tuned from its base")
    return "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "") or "an older checkpoint format"


@dataclass(frozen=True)
class Start:
    """How a training session begins: fresh, continuing `checkpoint`, or finishing a complete run."""

    action: str  # "fresh" | "continue" | "complete"
    checkpoint: Path | None = None
    note: str | None = None


def plan_start(work_dir: Path, identity: dict, train_cfg: TrainConfig, fallback_dir: Path | None = None) -> Start:
    """Decide from the folder's latest.pt (else fallback_dir's, e.g. a published models/) how to start."""
    mode = train_cfg.resume
    if mode is False:
        return Start("fresh")
    candidates = [work_dir / "latest.pt"] + ([fallback_dir / "latest.pt"] if fallback_dir else [])
    # plain values only (mmap): even a large checkpoint is inspected at once
    found = {p: read_info(p) for p in candidates if p.is_file()}
    # this run's checkpoint, wherever it is (after `dvc exp apply`, models/ may hold it while
    # checkpoints/ holds a later experiment); else the first one, to say what it is
    path = next((p for p, info in found.items() if same_run(info, identity)), next(iter(found), None))
    if path is None:
        if mode is True:
            looked = " or ".join(str(p) for p in candidates)
            raise GothicError(
                f"train.resume: true, but there is no checkpoint to continue ({looked} does not exist). A queued "
                "experiment starts from a clean copy of the last commit: continue a run in the workspace "
                "(`dvc exp run -S train.resume=true ...` after it), or commit it first (`dvc exp apply NAME`, then "
                "git commit); or start fresh with train.resume: auto")
        return Start("fresh")
    return judge(path, found[path], identity, train_cfg)


def same_run(info: CheckpointInfo, identity: dict) -> bool:
    return info.run_identity is not None and run_key(info.run_identity) == run_key(identity)


def judge(path: Path, info: CheckpointInfo, identity: dict, train_cfg: TrainConfig) -> Start:
    """How this session starts from one checkpoint found (train.resume auto or true)."""
    if not same_run(info, identity):
        if train_cfg.resume is True and "base" in identity:
            raise GothicError(f"train.resume: true continues a run, but {path} is another run "
                              f"({describe_difference(info.run_identity or {}, identity)}); a fine-tune starts from "
                              "train.init_from with train.resume: auto (or false)")
        if train_cfg.resume is True and info.run_identity is None:
            return Start("continue", path, f"{path}: an older checkpoint without a run key; continuing it")
        difference = describe_difference(info.run_identity or {}, identity)
        return Start("fresh", note=f"{path} is another run ({difference}); training this one from scratch")
    step, horizon = info.step, info.horizon
    if horizon != train_cfg.max_iters and train_cfg.resume == "auto":
        return Start("fresh", note=(f"{path} is this run trained to max_iters {horizon}, not "
                                    f"{train_cfg.max_iters}; training from scratch (train.resume: true "
                                    "continues it to the new max_iters instead)"))
    if step > train_cfg.max_iters:
        raise GothicError(f"{path}: already at step {step}, past train.max_iters={train_cfg.max_iters}; raise "
                          "train.max_iters to continue it, or start fresh with train.resume: false")
    if step == train_cfg.max_iters:
        return Start("complete", path, f"{path}: this run is complete at step {step}; nothing to train")
    return Start("continue", path)


def check_params_unchanged(model_cfg: ModelConfig, train_cfg: TrainConfig, now_model: ModelConfig,
                           now_train: TrainConfig, work_dir: Path) -> None:
    """Refuse to publish a run that params.yaml no longer describes: DVC records the stage's outputs
    under the params it reads when the stage ends (a `dvc exp apply` or a second `dvc exp run` may
    have rewritten the file meanwhile), so weights trained with other values would be recorded
    under these. Every model and train value counts, not only the run key's."""
    trained = {"model": to_dict(model_cfg), "train": to_dict(train_cfg)}
    now = {"model": to_dict(now_model), "train": to_dict(now_train)}
    if trained == now:
        return
    raise GothicError(f"params.yaml changed while this run trained ({describe_difference(trained, now)}), so its "
                      f"checkpoints are not published to be recorded under those params; they stay in {work_dir}. "
                      "Restore the params it trained with (git checkout params.yaml, or dvc exp apply the experiment "
                      "you meant) and run again: the complete run is then published without training")


def input_digests(paths: list[Path]) -> dict[str, str | None]:
    """The sha256 of each input the stage is recorded with beside its params (None: unreadable, which
    training itself reports in its own words)."""
    digests = {}
    for path in paths:
        try:
            digests[str(path)] = sha256_file(path)
        except OSError:
            digests[str(path)] = None
    return digests


def check_inputs_unchanged(started: dict[str, str | None], now: dict[str, str | None], work_dir: Path) -> None:
    """Refuse to publish a run whose inputs changed while it trained (a `dvc repro binarize` or
    `tokenize` in another shell): DVC would record the weights with files they were not trained on."""
    changed = [name for name, digest in started.items() if now.get(name) != digest]
    if changed:
        raise GothicError(f"{' and '.join(changed)} changed while this run trained, so its checkpoints are not "
                          f"published to be recorded with them; they stay in {work_dir}. Restore the files it trained "
                          "on (dvc checkout, or dvc repro of the stages before train) and run again to publish it "
                          "without training, or run again to train on the new ones")


def check_writable(out_dir: Path, create: bool = True) -> None:
    """Fail before training, not after an hour, when out_dir cannot take checkpoints. Without create,
    a folder that does not exist yet is left so: its nearest existing parent must take it."""
    try:
        if create:
            out_dir.mkdir(parents=True, exist_ok=True)
        probe = next(p for p in (out_dir, *out_dir.parents) if p.exists())
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:  # permissions, a file in the way, a read-only or full filesystem
        raise WriteError(f"cannot write checkpoints to {out_dir}: {e.strerror or e}") from None


class RunDirLock:
    """An exclusive lock on a run folder, so two trainings never write the same checkpoints.

    filelock takes an OS lock (flock on Linux and macOS, LockFileEx on Windows), which the kernel
    releases when the process dies, so a killed run never leaves it stale; its soft fallback (a
    marker file that a killed run would leave behind) is turned off.
    """

    # Windows locks byte 0 of the file and refuses reads of it to other processes: the holder's pid follows it
    HOLDER_OFFSET = 1

    def __init__(self, work_dir: Path):
        self.path = work_dir / LOCK_NAME
        self._lock = FileLock(self.path, timeout=0, thread_local=False, fallback_to_soft=False,
                              preserve_lock_file=True, on_acquired=self._write_holder)

    @classmethod
    def _write_holder(cls, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"\n" + str(os.getpid()).encode())

    def holder(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.HOLDER_OFFSET)
                return f.read(32).decode(errors="replace").strip() or "?"
        except OSError:
            return "?"

    def check_planted(self) -> None:
        """Refuse a lock file that is not this folder's own plain file: taking it truncates it and writes
        a pid there, so a symbolic or hard link would change a file elsewhere, and a FIFO or a device
        cannot hold a pid."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            what = "is a symbolic link"
        elif not stat.S_ISREG(st.st_mode):
            what = "is not a file (a FIFO, a device or a folder)"
        elif st.st_nlink > 1:
            what = f"is a hard link ({st.st_nlink} names share the file)"
        else:
            return
        raise GothicError(f"{self.path}: {what}, and a run folder's lock is a plain file of its own; remove it and "
                          "run again")

    def __enter__(self) -> RunDirLock:
        self.check_planted()
        try:
            self._lock.acquire()
        except Timeout:
            raise GothicError(f"{self.path.parent} is in use by another training run (pid {self.holder()}); wait for "
                              "it to finish, or give this one another folder (--out-dir)") from None
        # a run killed inside a write leaves its temporary file (gothic.files.atomic_path); the next
        # write of that file removes it, but best.pt or final.pt may not be written again this run
        for name in PUBLISHED:
            remove_stale_temps(self.path.parent / name)
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()


def copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def repair_copies(work_dir: Path) -> list[str]:
    """Make best.pt and final.pt agree with latest.pt after a stop between writing it and copying it.

    latest.pt is always written first; best.pt and final.pt are taken from it at the same step.
    So when latest.pt says its own step is the best (or the last), a best.pt (final.pt) of another
    step is a copy that the stop prevented. Returns the names repaired.
    """
    latest = read_info(work_dir / "latest.pt")
    wanted = {"best.pt": latest.best_step == latest.step, "final.pt": latest.step >= latest.horizon}
    repaired = []
    for name, should_be_latest in wanted.items():
        if not should_be_latest:
            continue
        info = read_info(work_dir / name) if (work_dir / name).is_file() else None
        if info is None or info.step != latest.step or info.run_identity != latest.run_identity:
            # what training writes there: latest.pt without the state only resuming needs
            TrainingCheckpoint.load_resumable(work_dir / "latest.pt").save(work_dir / name, resumable=False)
            repaired.append(name)
    return repaired


def adopt(checkpoint: Path, work_dir: Path) -> None:
    """Copy a published run (models/latest.pt and its best.pt) into the work folder to continue it there."""
    if checkpoint.parent == work_dir:
        return
    for name in ("latest.pt", "best.pt"):
        if (checkpoint.parent / name).is_file():
            copy_file(checkpoint.parent / name, work_dir / name)


def publish(work_dir: Path, publish_dir: Path) -> None:
    """Copy a complete run's checkpoints into publish_dir (the stage's DVC output)."""
    for name in PUBLISHED:
        if (work_dir / name).is_file():
            copy_file(work_dir / name, publish_dir / name)


# --- stopped runs kept aside -----------------------------------------------------------------------
# A stopped run is a latest.pt short of its max_iters. When a session will not continue the stopped
# run in the folder (another experiment in the same workspace), that run's files move to
# stopped/<run key>-<max_iters>/ instead of being overwritten; a later session of that run moves them
# back and continues it exactly. Moves are renames inside one folder: no copy, nothing half-written.

STOPPED_DIR = "stopped"
KEEP_STOPPED = 3
# latest.pt (what makes a folder a run) moves last, so a stop between two renames leaves the run
# whole on the side that still holds latest.pt
RUN_FILES = ("best.pt", "logs", "latest.pt")


def is_stopped(info: CheckpointInfo) -> bool:
    return info.run_identity is not None and info.step < info.horizon


def kept_runs(work_dir: Path) -> list[Path]:
    """The kept stopped runs, the one kept longest ago first."""
    shelf = work_dir / STOPPED_DIR
    entries = [d for d in shelf.iterdir() if (d / "latest.pt").is_file()] if shelf.is_dir() else []
    return sorted(entries, key=lambda d: d.stat().st_mtime_ns)


def describe_kept(folder: Path) -> str:
    info = read_info(folder / "latest.pt")
    return f"{folder} (step {info.step} of {info.horizon})"


def move_run(src: Path, dst: Path, names: tuple[str, ...] = RUN_FILES) -> None:
    """Move a run's files between the work folder and a kept folder; TensorBoard event files join the
    logs/ already there (their names are unique), so no run's logs are lost either way."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (src / name).exists():
            continue
        if name == "logs" and (dst / name).is_dir():
            for event_file in (src / name).iterdir():
                os.replace(event_file, dst / name / event_file.name)
            (src / name).rmdir()
        else:
            os.replace(src / name, dst / name)
    os.utime(dst)  # a kept folder's time is when it was kept: the oldest is pruned first


def drop_kept(folder: Path, why: str, log: Callable[[str], None]) -> None:
    line = f"train: dropped the kept stopped run {describe_kept(folder)}: {why}"
    shutil.rmtree(folder)
    log(line)


def keep_stopped(work_dir: Path, info: CheckpointInfo, identity: dict, train_cfg: TrainConfig,
                 log: Callable[[str], None]) -> None:
    """Move the folder's stopped run aside, then drop the kept runs beyond KEEP_STOPPED, oldest first."""
    dst = work_dir / STOPPED_DIR / f"{run_key(info.run_identity)}-{info.horizon}"
    for folder in (dst.parent, dst):  # a planted link would move the run outside the work folder
        if folder.is_symlink():
            raise GothicError(f"{folder}: is a symbolic link, and a stopped run is kept in a folder of the run "
                              "folder's own; remove the link and run again")
    if dst.exists():  # only a copy made by hand gets here: a session of that run would have brought it back
        drop_kept(dst, "the same run stopped later replaces it", log)
    best = work_dir / "best.pt"  # its best.pt goes with it, not one another run left there
    with_best = best.is_file() and read_info(best).run_identity == info.run_identity
    move_run(work_dir, dst, RUN_FILES if with_best else tuple(n for n in RUN_FILES if n != "best.pt"))
    why = (describe_difference(info.run_identity, identity) if not same_run(info, identity)
           else f"train.max_iters {info.horizon} -> {train_cfg.max_iters}")
    log(f"train: {work_dir / 'latest.pt'} is another run ({why}), stopped at step {info.step} of {info.horizon}: "
        f"kept in {dst} (its own params continue it from there)")
    for old in kept_runs(work_dir)[:-KEEP_STOPPED]:
        drop_kept(old, f"at most {KEEP_STOPPED} are kept, the oldest is dropped", log)


def settle_stopped_runs(work_dir: Path, identity: dict, train_cfg: TrainConfig, log: Callable[[str], None]) -> None:
    """Before a session plans its start (rank 0, under the lock): keep aside the folder's stopped run
    if this session will not continue it, and bring back a kept run that this session continues.

    train.resume: false starts this run fresh: its own stopped checkpoint (same run key, in the folder
    or kept) is dropped, as asked; other runs' are kept as with auto.
    """
    fresh = train_cfg.resume is False
    latest = work_dir / "latest.pt"
    info = read_info(latest) if latest.is_file() else None
    ours = info is not None and not fresh and judge(latest, info, identity, train_cfg).action != "fresh"
    if info is not None and is_stopped(info) and not ours and not (fresh and same_run(info, identity)):
        keep_stopped(work_dir, info, identity, train_cfg, log)
    for folder in kept_runs(work_dir):
        kept = read_info(folder / "latest.pt")
        if fresh and same_run(kept, identity):
            drop_kept(folder, "train.resume: false starts this run fresh", log)
        elif not fresh and not ours and same_run(kept, identity) and \
                judge(folder / "latest.pt", kept, identity, train_cfg).action != "fresh":
            # over what the folder holds now: a complete run (published, or trained over as before) or nothing
            log(f"train: bringing back this run, stopped at step {kept.step} of {kept.horizon}, from {folder}")
            move_run(folder, work_dir)
            with suppress(OSError):  # a file of the user's in it keeps it (no latest.pt: no longer a kept run)
                folder.rmdir()
            return


def wait_for_rank_0() -> None:
    """In a DDP job the other ranks plan only once rank 0 has moved kept runs (torchrun ends the job
    if rank 0 fails first)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


@dataclass
class RunFolder:
    """One training session's use of its folder (run_folder): how to start, and the adoption of a run
    to continue once its checkpoint has loaded."""

    work_dir: Path
    start: Start
    owner: bool
    log: Callable[[str], None]

    def adopt(self) -> None:
        """Bring the run being continued into the folder (from a published models/) and repair its
        copies; only once its checkpoint loaded, so a damaged one replaces nothing here."""
        if not self.owner or self.start.checkpoint is None:
            return
        adopt(self.start.checkpoint, self.work_dir)
        repaired = repair_copies(self.work_dir)
        if repaired:
            self.log(f"train: restored {', '.join(repaired)} from latest.pt (a stop came between them)")


@contextmanager
def run_folder(work_dir: Path, identity: dict, train_cfg: TrainConfig, publish_dir: Path | None = None,
               owner: bool = True, log: Callable[[str], None] | None = None) -> Iterator[RunFolder]:
    """One training session in work_dir: yields its RunFolder (how to start: plan_start), and
    publishes the run into publish_dir when the body returns.

    The owner (rank 0 of a DDP run) checks that the folder takes checkpoints, holds its lock for the
    whole session, and adopts a run to continue (RunFolder.adopt); the other ranks only read the
    plan. log receives the notes (another run found, copies repaired).
    """
    log = log or (lambda _msg: None)
    if owner:  # both folders, before an hour of training finds a read-only models/
        check_writable(work_dir)
        if publish_dir is not None:
            check_writable(publish_dir, create=False)  # created only when a complete run is published
    with RunDirLock(work_dir) if owner else nullcontext():
        if owner:
            settle_stopped_runs(work_dir, identity, train_cfg, log)
        wait_for_rank_0()
        start = plan_start(work_dir, identity, train_cfg, publish_dir)
        if start.note:
            log(f"train: {start.note}")
        yield RunFolder(work_dir, start, owner, log)
        if owner and publish_dir is not None:
            publish(work_dir, publish_dir)
