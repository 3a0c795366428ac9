"""On-disk cache of prepared arrays, keyed by a hash of the inputs' content and the config."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap
import zipfile
import zlib
from pathlib import Path

import numpy as np

from recmovie.io import atomic_path

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when the layout or meaning of cached arrays changes


def cache_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts (config dicts, fingerprints, versions)."""
    blob = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()


def load_arrays(cache_dir: str | Path, name: str, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray] | None:
    """The entry's arrays, or None (rebuild it) when it is absent, unreadable, or lacks one of
    `keys` (written by another version, or a file that only looks like an entry)."""
    path = Path(cache_dir) / f"{name}.npz"
    try:
        if not path.is_file():
            return None
        arrays = _mapped_arrays(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        log.warning("cache entry %s is unreadable (%s); rebuilding it", path, e)
        return None
    missing = [k for k in keys if k not in arrays]
    if missing:
        log.warning("cache entry %s lacks %s; rebuilding it", path, ", ".join(missing))
        return None
    return arrays


def _mapped_arrays(path: Path) -> dict[str, np.ndarray]:
    """An .npz entry's arrays, mapped from the file copy-on-write instead of read: np.load reads
    each member through zipfile in 256 KB pieces, each of which waits for the GIL while the run's
    MLflow thread imports and opens its store (benchmarks/RESULTS.md#cost). Every member's CRC is
    still checked (one zlib call each), so a damaged entry is rebuilt as before; writes to the
    arrays stay in this process."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    view = memoryview(mapped)
    arrays = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename} is not a stored .npy array")
            head = bytes(view[info.header_offset : info.header_offset + 30])
            if head[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"no local header for {info.filename}")
            start = info.header_offset + 30 + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
            member = view[start : start + info.file_size]
            if len(member) != info.file_size or zlib.crc32(member) != info.CRC:
                raise zipfile.BadZipFile(f"bad CRC-32 for {info.filename}")
            header = io.BytesIO(bytes(member[: min(len(member), 1 << 16)]))
            version = np.lib.format.read_magic(header)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(header)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds Python objects")
            count = int(np.prod(shape))
            if count == 0:
                array = np.empty(shape, dtype)
            else:
                array = np.frombuffer(mapped, dtype, count, offset=start + header.tell())
                array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
            arrays[info.filename[:-4]] = array
    return arrays


def save_arrays(cache_dir: str | Path, name: str, arrays: dict[str, np.ndarray]) -> Path | None:
    """Write an entry (atomically); None when the cache cannot be written (a read-only folder, a
    file where the folder should be, a full disk): the cache only saves time, so the run goes on."""
    path = Path(cache_dir) / f"{name}.npz"
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except OSError as e:
        log.warning("cannot write the cache entry %s (%s); going on without it", path,
                    f"{e.strerror}: {e.filename}" if e.filename else e)
        return None
    return path
