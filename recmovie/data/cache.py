"""On-disk cache of prepared arrays, keyed by a hash of the inputs' content and the config."""
from __future__ import annotations

import hashlib
import json
import logging
import zipfile
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
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        log.warning("cache entry %s is unreadable (%s); rebuilding it", path, e)
        return None
    missing = [k for k in keys if k not in arrays]
    if missing:
        log.warning("cache entry %s lacks %s; rebuilding it", path, ", ".join(missing))
        return None
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
