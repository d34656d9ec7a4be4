"""Atomic file writes: a reader (or a crash) never sees a half-written output."""

from __future__ import annotations

import errno
import functools
import glob
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gothic.errors import MACHINE_REFUSALS, GothicError, printable

# Every temporary file is `.<target name>.<pid>.<random>.tmp` beside its target (a rename is atomic
# only within one filesystem); .dvcignore lists `.*.tmp` so DVC never tracks one.
LEGACY_TEMP_AGE_S = 3600
"""A temp file without a pid in its name (older gothic) counts as stale after this long."""

# errors a write can meet beside the machine's refusals (gothic.errors.MACHINE_REFUSALS, exit 1):
# the path given is wrong (exit 2, like any other usage mistake)
_PATH_ERRORS = {
    errno.ENOTDIR: "a file stands where a folder is needed on that path",
    errno.EEXIST: "a file stands where a folder is needed on that path",
    errno.EISDIR: "a folder stands where the file should go",
    errno.ENAMETOOLONG: "choose a shorter name",
}


class WriteError(GothicError):
    """An output could not be written (full disk, read-only or forbidden folder); earlier files are intact."""

    exit_code = 1  # not a usage mistake: the command was right, the machine said no


def write_error(path: str | Path, e: OSError) -> GothicError | None:
    """The one-line error for an OSError met while writing path, or None when it is no write problem."""
    if e.errno in _PATH_ERRORS:
        return GothicError(f"cannot write {path}: {e.strerror or e} ({_PATH_ERRORS[e.errno]})")
    if e.errno in MACHINE_REFUSALS:
        return WriteError(f"cannot write {path}: {e.strerror or e} ({MACHINE_REFUSALS[e.errno]}; "
                          "files written before are intact)")
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temp files an interrupted (killed) writer of `path` left beside it.

    A temp whose writer is still running (another process writing the same target) is kept; one
    whose pid is gone is stale. Returns what was removed.
    """
    ours = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[a-z0-9_]+\.tmp")
    removed = []
    for found in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = ours.fullmatch(found.name)
        if match is None:  # another target's temp (a name that merely starts like ours)
            continue
        try:
            pid = match.group(1)
            if pid is not None:
                stale = int(pid) != os.getpid() and not _pid_alive(int(pid))
            else:
                stale = time.time() - found.stat().st_mtime > LEGACY_TEMP_AGE_S
            if stale:
                found.unlink()
                removed.append(found)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.

    On any exception the temporary file is removed and `path` is left as it was. A full disk, a
    read-only or forbidden folder becomes a one-line WriteError. Stale temp files of the same
    target (from a killed writer) are removed first.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@functools.cache
def process_umask() -> int:
    """The process's umask, read once when first needed (reading it means setting it, so it is put
    straight back; at import time that would touch the process state of every program importing us)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> Path:
    """A new, empty temporary file beside path, after removing the stale ones of path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        try:
            # mkstemp makes 0600; outputs should be readable like any other file
            os.fchmod(fd, 0o666 & ~process_umask())
        finally:
            os.close(fd)
    except OSError as e:
        raise (write_error(path, e) or e) from None
    return Path(tmp)


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """`atomic_path` for outputs that belong together: every one is written to its temporary
    path first, then all are renamed in place at the end; on any exception none is."""
    targets = [Path(p) for p in paths]
    tmps: list[Path] = []
    current = targets[0]  # the output an OSError is reported against
    try:
        for current in targets:
            tmps.append(_temp_beside(current))
        yield tmps
        for tmp, target in zip(tmps, targets, strict=True):
            current = target
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, target in zip(tmps, targets, strict=True):
            current = target
            os.replace(tmp, target)
    except OSError as e:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise (write_error(current, e) or e) from None
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


def json_text(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json_text(obj))


# --- what an output a user names may replace ---------------------------------------------------------

JSON_OUTPUT_LIMIT = 256 << 20
"""The largest file read to tell whether it is an earlier output (a 1M-token tokenizer.json is ~60 MB)."""


def json_object(path: Path) -> dict | None:
    """The JSON object a regular file holds, or None (not one, or larger than JSON_OUTPUT_LIMIT)."""
    try:
        if not path.is_file() or path.stat().st_size > JSON_OUTPUT_LIMIT:
            return None
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def is_metrics_file(path: Path) -> bool:
    obj = json_object(path)
    return obj is not None and "model" not in obj  # a tokenizer.json holds its model


def check_output_file(path: str | Path, flag: str, kind: str, is_kind: Callable[[Path], bool]) -> None:
    """An output file a user names replaces nothing but an earlier output of its kind (as an export
    replaces only an earlier export): `--output models/best.pt` must not turn a checkpoint into a
    tokenizer. Checked before any work; a link is fine (the write replaces the link, never its target)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file() or is_kind(path):
        return  # nothing there, or a folder, which the write itself refuses in one line
    raise GothicError(f"{flag} {printable(path)} exists and is not {kind}; choose another {flag} or remove it "
                      "yourself")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_inside(value: str, folder: Path, param: str, what: str) -> None:
    """The stages' rule for a path param: it must lie in `folder`, which dvc.yaml lists as the stage's
    dependency, or DVC would not see the file change. `what` names what the folder holds."""
    resolved, home = Path(value).resolve(), folder.resolve()
    if resolved != home and home not in resolved.parents:
        raise GothicError(f"{param}: {value} is outside {folder}/, the folder DVC tracks for {what}: copy it there "
                          f"(cp -r {value} {folder}/) or bring it with `dvc import ... -o {folder}/NAME`, then set "
                          f"{param} to that path")
