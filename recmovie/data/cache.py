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


def load_arrays(cache_dir: str | Path, name: str) -> dict[str, np.ndarray] | None:
    path = Path(cache_dir) / f"{name}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        log.warning("cache entry %s is unreadable (%s); rebuilding it", path, e)
        return None


def save_arrays(cache_dir: str | Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    path = Path(cache_dir) / f"{name}.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path
