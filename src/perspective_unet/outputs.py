"""Writing results safely: one writer per output folder, files that appear whole or not at all, no leftovers.

- :func:`output_lock` holds a folder for the duration of a command (a lock file with the holder's pid and host). A
  second command on the same folder stops with one clear message; a lock left by a process that no longer runs (a
  ``kill -9``) is taken over with a warning.
- :func:`atomic_write` and :func:`write_all` write to temporary names beside the targets and rename them only when
  every file of a result is complete: a label map never appears without its probabilities, a ``summary.json``
  never without its ``per_case.csv``.
- :func:`remove_stale_temporaries` deletes the temporary files a killed run left behind; commands call it while
  they hold the folder's lock, so they never touch a running command's files.
- :func:`write_json_atomic` writes a JSON file the same way.

Reading is guarded as well: :func:`read_json` and :func:`read_yaml` (:func:`parse_json` and :func:`parse_yaml` for a
text in hand) are the one reader of every JSON and YAML file a command takes (plans, fingerprints, dataset
descriptions, splits, model folders, run requests, configs, experiments). A file that is missing, larger than
:data:`MAX_DOCUMENT_BYTES`, nested deeper than :data:`MAX_NESTING` levels, not UTF-8, not valid, or that holds a key
twice (which one would count is a guess) is refused with one line naming it, before any of it is used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from perspective_unet.errors import InputError

__all__ = [
    "LOCK_NAME",
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING",
    "atomic_write",
    "default_file_mode",
    "lock_holder",
    "output_lock",
    "parse_json",
    "parse_yaml",
    "read_json",
    "read_yaml",
    "refuse_own_source",
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
# The largest JSON or YAML file a command reads: fingerprint.json, the largest this package writes, takes about 400
# bytes per case, so this leaves room for 100,000 cases while a hostile file cannot exhaust memory.
MAX_DOCUMENT_BYTES = 64 * 2**20
# The deepest nesting of lists and mappings read; this package's files nest at most five levels, and Python's parsers
# recurse once per level (a file nested 200,000 deep would end in a RecursionError).
MAX_NESTING = 100
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")


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

    If any writer fails (a full disk, an interrupt), every temporary file is removed and no target is touched; an
    ``OSError`` that names no file, or a temporary one, is given the target's name (the one the user knows).

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
    except BaseException as exc:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and pending:
            names = {str(tmp): str(target) for tmp, target in pending}
            exc.filename = names.get(str(exc.filename), exc.filename) or str(pending[-1][1])
        raise
    return [target for _, target in pending]


def _same(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return os.path.samefile(first, second)  # hard links and symbolic links too
    return first.resolve() == second.resolve()


def refuse_own_source(
    outputs: Iterable[str | os.PathLike[str]], sources: Iterable[str | os.PathLike[str]], fix: str
) -> None:
    """Raise ``InputError`` when an output path is one of the sources (the same file or folder, by any name), so a
    conversion or export never replaces what it was made from, even with ``--overwrite``.

    Args:
        outputs: The files or folders about to be written.
        sources: What they are made from.
        fix: What the user should do, ending the message.
    """
    sources = [Path(source) for source in sources]
    for output in map(Path, outputs):
        for source in sources:
            if _same(output, source):
                which = "the source itself" if output == source else f"the source {source} by another name"
                raise InputError(f"{output} is {which}; {fix} (nothing was written).")


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


class _RefusedDocumentError(ValueError):
    """A document refused by the guarded readers; the readers add the file's name and what to do."""


def _read_text(path: Path, kind: str, fix: str) -> str:
    if not path.is_file():
        raise InputError(f"{path} does not exist; {fix}")
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise InputError(
            f"{path} is {size / 2**20:.0f} MB, more than the {MAX_DOCUMENT_BYTES // 2**20} MB a {kind} file read "
            f"here may hold (this package's own take a few MB); {fix}"
        )
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); {fix}") from None


def _nests_deeper(text: str, limit: int) -> bool:
    """Whether ``[`` and ``{`` outside strings nest deeper than ``limit`` levels, found without recursion: each pass
    removes the innermost empty pairs of the brackets alone, so brackets nesting ``n`` levels vanish in ``n`` passes."""
    text = _JSON_STRING.sub("", text)
    brackets = text.translate(dict.fromkeys(map(ord, set(text) - set("[]{}"))))
    for _ in range(limit):
        brackets, removed = _INNERMOST_PAIR.subn("", brackets)
        if not brackets or not removed:  # gone: shallow enough; none removed: unbalanced, which the parser reports
            return False
    return True


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RefusedDocumentError(f"the key {key!r} appears twice (keep one)")
            seen.add(key)
    return result


def parse_json(text: str, origin: str | os.PathLike[str], fix: str) -> Any:
    """The content of a JSON text, guarded (see the module docstring).

    Args:
        text: The JSON text.
        origin: Where it came from (a file, an option), named in errors.
        fix: What the user should do, ending the one-line message.

    Raises:
        InputError: The text is nested too deep, holds a key twice, or is not valid JSON.
    """
    if _nests_deeper(text, MAX_NESTING):
        raise InputError(f"{origin}: lists or objects nest deeper than {MAX_NESTING} levels; {fix}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _RefusedDocumentError as exc:
        raise InputError(f"{origin}: {exc}; {fix}") from None
    except RecursionError:  # a caller already deep in the stack; the user still gets one line
        raise InputError(f"{origin}: lists or objects nest too deep; {fix}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{origin} is not valid JSON ({exc}); {fix}") from None


def read_json(path: str | os.PathLike[str], fix: str) -> Any:
    """The content of a JSON file, guarded (see the module docstring).

    Args:
        path: The file.
        fix: What the user should do when the file is missing or damaged, ending the one-line message.

    Raises:
        InputError: The file is missing, too large, nested too deep, holds a key twice or is not valid JSON (the
            message names it and ends with ``fix``).
    """
    path = Path(path)
    return parse_json(_read_text(path, "JSON", fix), path, fix)


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's safe loader (no tags that build objects) refusing deep nesting and keys given twice."""
    import yaml

    class GuardedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            try:
                if self.depth > MAX_NESTING:
                    raise _RefusedDocumentError(f"lists or mappings nest deeper than {MAX_NESTING} levels")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    twice = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if twice:
                    raise _RefusedDocumentError(
                        f"the key {key!r} appears twice (line {key_node.start_mark.line + 1}; keep one)"
                    )
            return super().construct_mapping(node, deep)

    return GuardedLoader


def parse_yaml(text: str, origin: str | os.PathLike[str], fix: str) -> Any:
    """The content of a YAML text, guarded (see the module docstring); safe: no tag builds a Python object.

    Raises:
        InputError: The text is nested too deep, holds a key twice, or is not valid YAML (the message names
            ``origin`` and ends with ``fix``).
    """
    import yaml

    loader = _yaml_loader()(text)
    loader.name = str(origin)  # PyYAML's messages then say where: in "recipe.yaml", line 3, column 1
    try:
        return loader.get_single_data()
    except _RefusedDocumentError as exc:
        raise InputError(f"{origin}: {exc}; {fix}") from None
    except RecursionError:
        raise InputError(f"{origin}: lists or mappings nest too deep; {fix}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{origin} is not valid YAML ({' '.join(str(exc).split())}); {fix}") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], fix: str) -> Any:
    """The content of a YAML file, guarded as :func:`parse_yaml` (and missing or large files as :func:`read_json`).

    Raises:
        InputError: The file is missing, too large, nested too deep, holds a key twice or is not valid YAML.
    """
    path = Path(path)
    return parse_yaml(_read_text(path, "YAML", fix), path, fix)


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


def lock_holder(folder: str | os.PathLike[str], name: str = LOCK_NAME) -> tuple[int, str] | None:
    """The (pid, host) of the process holding ``folder``'s lock, or None: no lock, or one left by a process of this
    host that no longer runs (which :func:`output_lock` takes over). A lock of another host counts as held."""
    holder = _holder(Path(folder) / name)
    if holder is None or (holder[1] == socket.gethostname() and not _alive(holder[0])):
        return None
    return holder


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
