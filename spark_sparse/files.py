"""Writing files so that nothing is half-written or overwritten by surprise, and checking zip containers.

Every command that writes a file goes through :func:`atomic_write` (a reader sees the old file or
the complete new one, never a mix) and, for outputs the user names, :func:`check_output` first
(the same rule everywhere: never over an input, never over an existing file without ``--force``).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Callable, Iterable, Optional


class OutputError(ValueError):
    """An output path that must not or cannot be written."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # platforms without directory handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary name is unique (two writers never share it) and is removed if ``write`` fails or
    the process is interrupted. The file gets an ordinary file's permissions (0666 minus the umask,
    not mkstemp's private 0600). ``durable`` fsyncs the data and the folder, so a power cut after
    the rename cannot leave an empty file under the final name.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(folder)


def write_text(path: str, text: str, *, durable: bool = False) -> None:
    """Atomically write ``text`` (UTF-8, ending in a newline)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text if not text or text.endswith("\n") else text + "\n")
    atomic_write(path, write, durable=durable)


def file_kind(path: str) -> str:
    """'safetensors', 'zip' (torch.save), 'pickle' (legacy torch.save) or 'unknown', from the first bytes
    (never from the name: a file's extension can lie)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def zip_damage(path: str) -> Optional[str]:
    """None when every record of the zip archive (a ``torch.save`` file) passes its CRC-32, else the name
    of the first bad record. ``torch.load`` does not check them, so a flipped bit inside a tensor
    would load silently. Raises ``zipfile.BadZipFile`` / ``OSError`` when it is no zip at all."""
    with zipfile.ZipFile(path) as archive:
        return archive.testzip()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output(path: str, *, inputs: Iterable[str] = (), force: bool = False, what: str = "--out") -> None:
    """Refuse an output ``path`` that would destroy something: one of the command's ``inputs`` (never,
    even with ``force``), an existing file (only with ``force``), a folder, or a place that cannot be
    written. Called before any work, so a refused command has written nothing."""
    for source in inputs:
        if os.path.exists(path) and _same_file(path, source):
            raise OutputError(f"{what} {path} is also an input of this command; writing it would destroy the "
                              f"input: choose another {what}")
    if os.path.isdir(path):
        raise OutputError(f"{what} {path} is a folder, where a file is to be written: choose another {what}")
    if os.path.lexists(path) and not force:
        raise OutputError(f"{what} {path} exists; pass --force to overwrite it")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):  # the nearest existing folder must let us create the rest
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{what} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: cannot write into {existing} (permission denied)")
