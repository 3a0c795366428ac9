"""Rebuild the bundled sample (recmovie/sample_data/ml-latest-small) from a MovieLens ml-latest-small folder.

    python scripts/build_sample.py /path/to/ml-latest-small

Every rating becomes an implicit interaction; titles, years and genres come from movies.csv.
The dataset's own README.txt (its licence) is copied beside the converted files.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from recmovie.data.prepare import sample_dir
from recmovie.data.readers import read_movielens
from recmovie.data.synthetic import write_competition_folder


def main(src: str) -> None:
    out = sample_dir()
    ds = read_movielens(src)
    write_competition_folder(ds, out)
    shutil.copyfile(Path(src) / "README.txt", out / "README.txt")
    print(f"wrote {len(ds)} interactions, {ds.n_users} users, {ds.n_items} items to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
