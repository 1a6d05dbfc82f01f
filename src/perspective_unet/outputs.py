"""Writing results safely: one writer per output folder, files that appear whole or not at all, no leftovers.

- :func:`output_lock` holds a folder for the duration of a command (a lock file with the holder's pid and host). A
  second command on the same folder stops with one clear message; a lock left by a process that no longer runs (a
  ``kill -9``) is taken over with a warning.
- :func:`atomic_write` and :func:`write_all` write to temporary names beside the targets and rename them only when
  every file of a result is complete: a label map never appears without its probabilities, a ``summary.json``
  never without its ``per_case.csv``.
- :func:`remove_stale_temporaries` deletes the temporary files a killed run left behind; commands call it while
  they hold the folder's lock, so they never touch a running command's files.
- :func:`write_json_atomic` writes a JSON file the same way, and :func:`read_json` is the one reader of the JSON files
  this package writes (plan, fingerprint, dataset description, geometry), whose errors name the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError

__all__ = [
    "LOCK_NAME",
    "atomic_write",
    "default_file_mode",
    "output_lock",
    "read_json",
    "remove_stale_temporaries",
    "temporary_path",
    "text_writer",
    "write_all",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".perspective-unet.lock"
# Every temporary name this package writes starts with this, so leftovers of killed runs can be recognized.
TEMPORARY_PREFIX = ".tmp-"


def default_file_mode() -> int:
    """The mode a new file gets under the current umask (0o666 minus the umask), as ``open`` would give it."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A hidden temporary name beside ``path`` with the same suffix (``.tmp-<random>-<name>``)."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")


def write_all(writers: Mapping[str | os.PathLike[str], Callable[[Path], None]]) -> list[Path]:
    """Write several files as one result: each writer fills a temporary file, then all are renamed into place.

    If any writer fails (a full disk, an interrupt), every temporary file is removed and no target is touched.

    Args:
        writers: Target path -> function that writes the file at the path it is given.

    Returns:
        The targets, in order.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for target, write in writers.items():
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_path(target)
            pending.append((tmp, target))
            write(tmp)
            with contextlib.suppress(OSError):
                os.chmod(tmp, default_file_mode())
        for tmp, target in pending:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    return [target for _, target in pending]


def text_writer(text: str) -> Callable[[Path], None]:
    """A writer for :func:`write_all` or :func:`atomic_write` that writes ``text`` as it is."""
    return lambda path: path.write_text(text)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write one file through a temporary name and a rename, so it appears whole or not at all."""
    return write_all({path: write})[0]


def write_json_atomic(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON (indented, lists of numbers on one line) through a temporary file, so a reader never sees half
    a file."""
    # Lists of numbers on one line: [224, 224] reads and edits better than one number per line.
    text = re.sub(
        r"\[\s+([^\[\]{}\"]*?)\s+\]",
        lambda m: "[" + ", ".join(map(str.strip, m.group(1).split(","))) + "]",
        json.dumps(data, indent=2),
    )
    return atomic_write(path, text_writer(text + "\n"))


def read_json(path: str | os.PathLike[str], fix: str) -> Any:
    """The content of a JSON file.

    Args:
        path: The file.
        fix: What the user should do when the file is missing or damaged, ending the one-line message.

    Raises:
        InputError: The file is missing or not valid JSON (the message names it and ends with ``fix``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); {fix}") from None


def _holder(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's running process
        return True
    return True


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike[str], command: str = "perspective-unet", name: str = LOCK_NAME
) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for one command; yields the folder.

    A folder this call created (and the parents it created for it) is removed again if still empty when the command
    ends.

    Args:
        folder: The output folder.
        command: Recorded in the lock file, for people.
        name: The lock file's name in ``folder`` (a command writing one entry of a shared parent folder locks only
            that entry with a name of its own).

    Raises:
        InputError: Another running command holds the folder.
    """
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # the deepest first
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / name
    me = f"{os.getpid()} {socket.gethostname()} {command}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and holder[1] == socket.gethostname() and not _alive(holder[0]):
                logger.warning(
                    "%s was locked by process %d, which no longer runs; taking the folder over.", folder, holder[0]
                )
                lock.unlink(missing_ok=True)
                continue
            who = f"process {holder[0]} on {holder[1]}" if holder else "another command"
            raise InputError(
                f"{folder} is in use by {who} (lock file {lock}); wait until it finishes, or choose "
                "another output folder. Delete the lock file only if no command uses the folder."
            ) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    else:  # pragma: no cover - three takeovers in a row mean another process races for the same lock
        raise InputError(f"{folder}: could not take the lock {lock}; another command is starting there.")
    try:
        yield folder
    finally:
        if _holder(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)
        for path in created:  # a command that failed before writing anything leaves no empty folder behind
            try:
                path.rmdir()
            except OSError:
                break


def remove_stale_temporaries(
    folder: str | os.PathLike[str], patterns: tuple[str, ...] = (f"{TEMPORARY_PREFIX}*",)
) -> list[Path]:
    """Delete temporary files (and folders) matching ``patterns`` in ``folder``; call it while holding the lock."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for pattern in patterns:
        for path in folder.glob(pattern):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                continue
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) a stopped run left in %s", len(removed), folder)
    return removed
