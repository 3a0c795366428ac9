"""Readers -> one Dataset, and every input error named by file and line."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from recmovie.data.readers import read_competition, read_movielens
from recmovie.errors import DataError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def competition(tmp_path, ratings="user,item,time\n1,10,100\n1,20,200\n2,10,150\n", **side):
    folder = tmp_path / "comp"
    write(folder / "train_ratings.csv", ratings)
    for name, text in side.items():
        write(folder / name, text)
    return folder


def test_competition_folder_with_side_files(tmp_path):
    folder = competition(
        tmp_path,
        **{"genres.tsv": "item\tgenre\n10\tDrama\n10\tComedy\n20\tDrama\n",
           "titles.tsv": 'item\ttitle\n10\t"""Quoted"" Title (1999)"\n20\tOther (2001)\n',
           "years.tsv": "item\tyear\n10\t1999\n"},
    )
    ds = read_competition(folder)
    assert (ds.n_users, ds.n_items, len(ds)) == (2, 2, 3)
    assert list(ds.user_ids) == [1, 2] and list(ds.item_ids) == [10, 20]
    # rows in (user, time) order with dense ids
    assert list(zip(ds.user, ds.item, ds.time)) == [(0, 0, 100), (0, 1, 200), (1, 0, 150)]
    assert sorted(ds.side["genre"].vocab) == ["Comedy", "Drama"] and len(ds.side["genre"].item) == 3
    assert '"Quoted" Title (1999)' in ds.side["title"].vocab
    years = ds.item_years()
    assert years[0] == 1999 and np.isnan(years[1])  # items without side rows are allowed


def test_duplicates_keep_the_latest_with_a_warning(tmp_path, caplog):
    folder = competition(tmp_path, "user,item,time\n1,10,100\n1,10,300\n1,20,200\n")
    with caplog.at_level(logging.WARNING):
        ds = read_competition(folder)
    assert len(ds) == 2 and "1 duplicate" in caplog.text
    assert list(ds.time) == [200, 300]  # item 10 kept at its latest time, so it is now last


def test_side_rows_for_unknown_items_are_dropped_with_a_warning(tmp_path, caplog):
    folder = competition(tmp_path, **{"directors.tsv": "item\tdirector\n10\tnm1\n999\tnm2\n"})
    with caplog.at_level(logging.WARNING):
        ds = read_competition(folder)
    assert len(ds.side["director"].item) == 1
    assert "directors.tsv" in caplog.text and "999" in caplog.text


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("user,item\n1,10\n", 1, "missing column(s) 'time'"),
        ("user,item,time\n1,10,100\n2,x,5\n", 3, "'item' has 'x', expected an integer"),
        ("user,item,time\n1,10,100\n2,11,1.5\n", 3, "'time' has '1.5', expected an integer"),
        ("user,item,time\n1,10,100\n2,11,\n", 3, "'time' is empty or NaN"),
        ("user,item,time\n1,10,100\n2,11,NaN\n", 3, "'time' is empty or NaN"),
        ("user,item,time\n1,10,100\n2,11,5,7\n", 3, "has 4 field(s), expected 3"),
        ("user,item,time\n", None, "no data rows"),
        ("", None, "empty file"),
    ],
)
def test_bad_interactions_file_names_file_line_and_problem(tmp_path, text, line, words):
    folder = competition(tmp_path, text)
    with pytest.raises(DataError) as e:
        read_competition(folder)
    assert str(folder / "train_ratings.csv") in str(e.value)
    assert words in str(e.value)
    assert e.value.line == line


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        read_competition(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train_ratings.csv: file not found"):
        read_competition(tmp_path / "empty")


def test_bad_side_file_names_its_line(tmp_path):
    folder = competition(tmp_path, **{"years.tsv": "item\tyear\n10\t1999\nabc\t2001\n"})
    with pytest.raises(DataError, match=r"years.tsv, line 3: column 'item' has 'abc'"):
        read_competition(folder)


def test_movielens_csv_release(tmp_path):
    folder = tmp_path / "ml-latest-small"
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,2.5,964981247\n2,3,5.0,964982224\n")
    write(folder / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Grumpier Old Men, The (1995)",Comedy|Romance\n4,Unrated (2000),(no genres listed)\n')
    ds = read_movielens(folder)
    assert (ds.n_users, ds.n_items, len(ds)) == (2, 2, 3)
    assert list(ds.item_years()) == [1995, 1995]
    assert set(ds.side["genre"].vocab) == {"Adventure", "Animation", "Comedy", "Romance"}
    assert len(read_movielens(folder, min_rating=4.0)) == 2


def test_movielens_dat_release(tmp_path):
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n".encode("latin-1"))
    ds = read_movielens(folder)
    assert (ds.n_users, ds.n_items, len(ds)) == (2, 2, 3)
    assert "Children's" in ds.side["genre"].vocab


def test_movielens_100k_release(tmp_path):
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t4\t881251000\n")
    flags = ["0"] * 19
    action = flags.copy(); action[1] = "1"
    write(folder / "u.item", "242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(action) + "\n"
          "302|L.A. Confidential|01-Jan-1997||http://y|" + "|".join(flags) + "\n")
    ds = read_movielens(folder)
    assert (ds.n_users, ds.n_items, len(ds)) == (2, 2, 3)
    assert list(ds.side["genre"].vocab) == ["Action"]
    assert list(ds.item_years()) == [1996, 1997]  # the year of a title without one comes from the date


def test_movielens_folder_without_ratings(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="no MovieLens ratings file"):
        read_movielens(tmp_path / "x")


def test_bundled_sample_reads():
    from recmovie.data.prepare import sample_dir

    ds = read_competition(sample_dir())
    assert (ds.n_users, ds.n_items, len(ds)) == (610, 9724, 100836)
    assert {"title", "year", "genre"} <= set(ds.side)
    assert (sample_dir() / "README.txt").exists()
