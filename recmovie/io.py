"""Atomic file writes: a reader never sees a half-written file, and a failed write leaves the old one."""
from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

# a temporary file older than this whose writer is gone is an orphan (its process was killed -9)
ORPHAN_AGE_S = 60.0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_orphans(folder: Path) -> None:
    """Remove temporary files of `atomic_path` left in `folder` by a process that died before it
    could rename or remove them (kill -9, power loss). Their names carry the writer's process id;
    the age test keeps a live writer on another machine sharing the folder safe."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2].split("-")[0]  # .<name>.<pid>-<random>.tmp
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > ORPHAN_AGE_S:
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`, on error removed.

    The temporary file is created with mode 0666 minus the umask, like any file the user writes
    (mkstemp would make it 0600, and the rename keeps that mode: teammates could not read a
    submission)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_csv(path: Path, columns: dict) -> None:
    """Columns of equal length as a CSV with a header, written atomically (pyarrow: fast at 5M rows)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write((",".join(columns) + "\n").encode())
            pcsv.write_csv(pa.table(columns), f, write_options=pcsv.WriteOptions(include_header=False, quoting_style="none"))
