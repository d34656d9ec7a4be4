"""Simulated full disks and read-only folders, for tests/test_bad_input.py (we run as root, where
chmod stops nothing). `patches(fault)` lists (module, attribute, replacement) triples: the test
applies them in-process with monkeypatch; sitecustomize.py applies them in a subprocess.

    full:NAME      the temp file of every atomic write of a file called NAME is a link to /dev/full,
                   so the real write (torch's C++ writer, shutil, write_text) fails with ENOSPC
                   exactly as on a full disk
    readonly:DIR   creating, writing or renaming anything under DIR fails with EROFS, as on a
                   read-only mount
"""

from __future__ import annotations

import errno
import os
import tempfile


def patches(fault: str) -> list[tuple[object, str, object]]:
    kind, _, arg = fault.partition(":")
    if kind == "full":
        return [(tempfile, "mkstemp", _full_mkstemp(tempfile.mkstemp, arg))]
    if kind == "readonly":
        return _read_only(os.path.realpath(arg))
    raise ValueError(f"unknown fault {fault!r}")


def _full_mkstemp(mkstemp, name: str):
    def full_mkstemp(*args, **kwargs):
        fd, path = mkstemp(*args, **kwargs)
        if os.path.basename(path).startswith(f".{name}."):
            os.unlink(path)  # the fd still points at the deleted file: fchmod on it touches nothing else
            os.symlink("/dev/full", path)
        return fd, path

    return full_mkstemp


def _read_only(root: str) -> list[tuple[object, str, object]]:
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_open, real_mkdir, real_replace, real_rename = os.open, os.mkdir, os.replace, os.rename

    def inside(path) -> bool:
        return not isinstance(path, int) and (os.path.realpath(os.fsdecode(path)) + os.sep).startswith(root + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def open_(path, flags, *args, **kwargs):
        if flags & write_flags and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if inside(dst):
            refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if inside(dst):
            refuse(dst)
        return real_rename(src, dst, *args, **kwargs)

    return [(os, "open", open_), (os, "mkdir", mkdir), (os, "replace", replace), (os, "rename", rename)]
