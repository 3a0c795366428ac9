"""Readers: a competition folder, MovieLens raw releases, or the synthetic generator -> one `Dataset`.

Parsing is fast (pyarrow) on good input; when a file is bad, a slow pass finds the first bad line
so that the error names the file, the line and the problem.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np

from recmovie.data.dataset import ATTRIBUTES_JSON, SIDE_FILES, Dataset, build_dataset
from recmovie.errors import DataError

log = logging.getLogger(__name__)

INTERACTIONS_FILE = "train_ratings.csv"
INTERACTION_COLUMNS = ("user", "item", "time")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NULLS = {"", "nan", "NaN", "NAN", "NA", "N/A", "null", "NULL", "None", "none"}


# ---------------------------------------------------------------- low-level table reading
def _open_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a file")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(path, "empty file")
    return data


def _check_utf8(path: Path, data: bytes, encoding: str) -> None:
    """Raise at the first line holding bytes that are not text in `encoding` (a file saved as
    Latin-1 or UTF-16 read as UTF-8)."""
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(path, f"byte 0x{data[e.start]:02x} is not {encoding} text (save the file as UTF-8)",
                        line=line) from None


def _header(path: Path, data: bytes, sep: str, encoding: str) -> list[str]:
    first = data.split(b"\n", 1)[0]
    _check_utf8(path, first, encoding)
    return [c.strip().strip('"') for c in first.decode(encoding).lstrip("\ufeff").rstrip("\r").split(sep)]


def _arrow_table(data: bytes, names: list[str], columns: dict[str, str], sep: str, encoding: str, quoted: bool,
                 has_header: bool):
    """pyarrow's CSV reader over the file's bytes: the named columns, typed, empty values as nulls."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
    return pcsv.read_csv(
        io.BytesIO(data if encoding.lower().replace("-", "") == "utf8" else data.decode(encoding).encode()),
        read_options=pcsv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0, block_size=1 << 24),
        parse_options=pcsv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False),
        convert_options=pcsv.ConvertOptions(column_types={c: types[t] for c, t in columns.items()},
                                            include_columns=list(columns), null_values=sorted(_NULLS),
                                            strings_can_be_null=True),
    )


def read_table(
    path: Path,
    columns: dict[str, str],
    sep: str = ",",
    header: list[str] | None = None,
    encoding: str = "utf-8",
    quoted: bool = True,
    data: bytes | None = None,
) -> dict[str, np.ndarray]:
    """Read the named columns of a delimited file.

    columns: name -> "int" | "float" | "str". With `header=None` the file's first line is its header
    and must contain every name; otherwise `header` names the columns of a header-less file.
    Returns one numpy array per requested column; raises DataError naming the file and line.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    path = Path(path)
    if data is None:
        data = _open_bytes(path)
    has_header = header is None
    names = _header(path, data, sep, encoding) if has_header else list(header)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(
            path,
            f"missing column(s) {', '.join(repr(c) for c in missing)}; the header is {sep.join(names)!r} "
            f"(expected {sep.join(columns)!r})",
            line=1,
        )
    if len(set(names)) != len(names):
        raise DataError(path, f"repeated column name in header {sep.join(names)!r}", line=1)
    first_data_line = 2 if has_header else 1
    try:
        table = _arrow_table(data, names, columns, sep, encoding, quoted, has_header)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        _diagnose(path, data, names, columns, sep, encoding, quoted, first_data_line)
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise DataError(path, f"could not be parsed ({reason})") from None  # pragma: no cover
    if table.num_rows == 0:
        raise DataError(path, "has a header but no data rows")
    if any(table.column(c).null_count for c in columns):
        _diagnose(path, data, names, columns, sep, encoding, quoted, first_data_line)
    if quoted and any(pc.any(pc.match_substring(table.column(c), "\n")).as_py() for c, t in columns.items()
                      if t == "str"):
        _unclosed_quote(path, data, sep, encoding)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


def _unclosed_quote(path: Path, data: bytes, sep: str, encoding: str) -> None:
    """A value spanning lines is a `"` that opens a quoted field and is never closed on its line
    (no value of these files holds a line break): raise at that line, instead of taking the lines
    after it as part of the value."""
    for n, line in enumerate(data.decode(encoding).splitlines(), start=1):
        for field in line.split(sep):
            field = field.strip()
            if field.startswith('"') and (len(field) < 2 or not field.endswith('"') or field.count('"') % 2):
                raise DataError(path, f"the '\"' at the start of {field[:40]!r} is never closed, so the lines after "
                                "it would be read as one value (close or remove it)", line=n)
    raise DataError(path, "a quoted value runs over several lines")  # pragma: no cover


def _diagnose(path, data, names, columns, sep, encoding, quoted, first_line) -> None:
    """Slow pass over a file the fast parser refused: raise at the first bad line."""
    _check_utf8(path, data, encoding)
    text = data.decode(encoding).lstrip("\ufeff")
    reader = csv.reader(
        io.StringIO(text), delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    )
    idx = {c: names.index(c) for c in columns}
    for n, row in enumerate(reader, start=1):
        if n < first_line:
            continue
        if not row:
            raise DataError(path, "empty line", line=n)
        if len(row) != len(names):
            raise DataError(path, f"has {len(row)} field(s), expected {len(names)} ({sep.join(names)})", line=n)
        for c, t in columns.items():
            v = row[idx[c]].strip()
            if v in _NULLS:
                raise DataError(path, f"column {c!r} is empty or NaN ({v!r})", line=n)
            if t == "int":
                if not _INTEGER.fullmatch(v):  # ASCII digits only: \d would take Arabic or full-width ones
                    raise DataError(path, f"column {c!r} has {v!r}, expected an integer (digits 0-9)", line=n)
                if not -(2**63) <= int(v) < 2**63:
                    raise DataError(path, f"column {c!r} has {v!r}, beyond the 64-bit integer range", line=n)
            if t == "float":
                try:
                    float(v)
                except ValueError:
                    raise DataError(path, f"column {c!r} has {v!r}, expected a number", line=n) from None


# ---------------------------------------------------------------- competition folder
def read_competition(folder: str | Path) -> Dataset:
    """`train_ratings.csv` (user,item,time) plus any of titles/years/genres/directors/writers/
    attributes.tsv, or instead of attributes.tsv the S3-Rec baseline's `*_item2attributes.json`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "data folder not found")
    path = folder / INTERACTIONS_FILE
    cols = read_table(path, {c: "int" for c in INTERACTION_COLUMNS})
    side = {}
    for name, fname in SIDE_FILES.items():
        side_path = folder / fname
        if side_path.exists():
            t = read_table(side_path, {"item": "int", name: "str"}, sep="\t")
            side[name] = (t["item"], t[name], str(side_path))
    json_path = attributes_json(folder)
    if json_path is not None:
        side["attribute"] = (*read_item2attributes(json_path), str(json_path))
    return build_dataset(cols["user"], cols["item"], cols["time"], side=side, source=str(path))


def attributes_json(folder: Path) -> Path | None:
    """The folder's `*_item2attributes.json`, if any; two of them, or one beside attributes.tsv,
    would leave the attribute field ambiguous and are refused."""
    found = sorted(folder.glob(ATTRIBUTES_JSON))
    if len(found) > 1:
        raise DataError(folder, f"holds {len(found)} item2attributes files ({', '.join(p.name for p in found)}); "
                        "keep one")
    if found and (folder / SIDE_FILES["attribute"]).exists():
        raise DataError(found[0], f"and {SIDE_FILES['attribute']} both give the items' attributes; keep one")
    return found[0] if found else None


def read_item2attributes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """S3-Rec's `{"<item id>": [<attribute id>, ...]}` as (raw item ids, attribute values as strings)."""
    data = _open_bytes(path)
    try:
        mapping = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(path, f"is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(path, f"is not valid JSON: {e.msg}", line=e.lineno) from None
    if not isinstance(mapping, dict):
        raise DataError(path, f"must hold one object of item id -> list of attributes, got a {type(mapping).__name__}")
    items, values = [], []
    for key, attrs in mapping.items():
        if not _INTEGER.fullmatch(str(key).strip()):
            raise DataError(path, f"item id {key!r} is not an integer")
        if not isinstance(attrs, list) or not all(isinstance(a, (int, str)) and not isinstance(a, bool) for a in attrs):
            raise DataError(path, f"item {key}: expected a list of attribute ids, got {attrs!r}"[:200])
        items.extend([int(key)] * len(attrs))
        values.extend(str(a) for a in attrs)
    return np.asarray(items, np.int64), np.asarray(values, dtype=str)


# ---------------------------------------------------------------- MovieLens raw releases
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")


def read_movielens(folder: str | Path, min_rating: float | None = None) -> Dataset:
    """A MovieLens release folder, told apart by its files:
    ratings.csv+movies.csv (ml-latest[-small], ml-20m, ml-25m), ratings.dat+movies.dat (ml-1m, ml-10m),
    u.data+u.item (ml-100k). Every rating is an interaction (or those >= `min_rating`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "data folder not found")
    if (folder / "ratings.csv").exists():
        r = read_table(folder / "ratings.csv", {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"})
        m = read_table(folder / "movies.csv", {"movieId": "int", "title": "str", "genres": "str"})
        movies_path = folder / "movies.csv"
    elif (folder / "ratings.dat").exists():
        r = read_table(
            folder / "ratings.dat",
            {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
            sep="\t", header=["userId", "movieId", "rating", "timestamp"], quoted=False,
            data=_double_colon(folder / "ratings.dat"),
        )
        movies_path = folder / "movies.dat"
        m = read_table(
            movies_path, {"movieId": "int", "title": "str", "genres": "str"}, sep="\t",
            header=["movieId", "title", "genres"], quoted=False, data=_double_colon(movies_path, "latin-1"),
        )
    elif (folder / "u.data").exists():
        r = read_table(
            folder / "u.data", {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
            sep="\t", header=["userId", "movieId", "rating", "timestamp"], quoted=False,
        )
        movies_path = folder / "u.item"
        m = _read_u_item(movies_path)
    else:
        raise DataError(folder, "no MovieLens ratings file found (ratings.csv, ratings.dat or u.data)")

    keep = np.ones(len(r["userId"]), bool) if min_rating is None else r["rating"] >= float(min_rating)
    titles = m["title"].astype(str)
    item_g, genre = [], []
    for mid, g in zip(m["movieId"], m["genres"].astype(str)):
        for name in g.split("|"):
            if name and name != "(no genres listed)":
                item_g.append(mid)
                genre.append(name)
    years = [(mid, y.group(1)) for mid, t in zip(m["movieId"], titles) if (y := _YEAR_IN_TITLE.search(t.strip()))]
    src = str(movies_path)
    side = {
        "title": (m["movieId"], titles, src),
        "year": (np.array([a for a, _ in years], np.int64), np.array([b for _, b in years]), src),
        "genre": (np.array(item_g, np.int64), np.array(genre), src),
    }
    return build_dataset(r["userId"][keep], r["movieId"][keep], r["timestamp"][keep], side=side, source=str(folder))


def _double_colon(path: Path, encoding: str = "utf-8") -> bytes:
    data = _open_bytes(path)
    if encoding != "utf-8":
        data = data.decode(encoding).encode("utf-8")
    return data.replace(b"\t", b" ").replace(b"::", b"\t")


def _read_u_item(path: Path) -> dict[str, np.ndarray]:
    text = _open_bytes(path).decode("latin-1")
    ids, titles, genres = [], [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        f = line.split("|")
        if len(f) != 5 + len(ML100K_GENRES) or not f[0].strip().isdigit():
            raise DataError(path, f"has {len(f)} '|' field(s), expected {5 + len(ML100K_GENRES)} with a numeric id", line=n)
        title = f[1]
        if not _YEAR_IN_TITLE.search(title) and f[2][-4:].isdigit():
            title = f"{title} ({f[2][-4:]})"
        ids.append(int(f[0]))
        titles.append(title)
        genres.append("|".join(g for g, flag in zip(ML100K_GENRES, f[5:]) if flag.strip() == "1"))
    return {"movieId": np.array(ids, np.int64), "title": np.array(titles), "genres": np.array(genres)}


# ---------------------------------------------------------------- fingerprints
def files_fingerprint(paths: list[Path]) -> str:
    """Content hash of the given files (names and bytes), the key of everything derived from them."""
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        h.update(b"\1")
    return h.hexdigest()


def input_files(fmt: str, folder: str | Path) -> list[Path]:
    """The files a reader of format `fmt` would read in `folder` (for fingerprinting)."""
    folder = Path(folder)
    if fmt == "competition":
        names = [INTERACTIONS_FILE, *SIDE_FILES.values(), *(p.name for p in folder.glob(ATTRIBUTES_JSON))]
    else:
        names = ["ratings.csv", "movies.csv", "ratings.dat", "movies.dat", "u.data", "u.item"]
    return [folder / n for n in names if (folder / n).is_file()]
