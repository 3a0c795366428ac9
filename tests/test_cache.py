"""The prepared-data cache: hits, invalidation, atomic writes, corrupt entries, switched off."""
from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from recmovie.data.cache import load_arrays, save_arrays
from recmovie.data.prepare import prepare_data


def cfgs(folder, n_random=8, kinds=()):
    return (OmegaConf.create({"format": "competition", "dir": str(folder)}),
            OmegaConf.create({"name": "competition", "n_last": 2, "n_random": n_random, "seed": 1}),
            OmegaConf.create({"kinds": list(kinds)}))


def copy_folder(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_second_run_hits_the_cache_with_identical_arrays(small_dir, tmp_path):
    first = prepare_data(*cfgs(small_dir), tmp_path / "cache")
    second = prepare_data(*cfgs(small_dir), tmp_path / "cache")
    assert first.info["cache"] == "miss" and second.info["cache"] == "prepared"
    assert np.array_equal(first.train_mask, second.train_mask)
    assert np.array_equal(first.weight, second.weight)
    assert np.array_equal(first.holdout.item, second.holdout.item)
    assert first.dataset.side.keys() == second.dataset.side.keys()
    assert not list((tmp_path / "cache").glob("*.tmp"))  # writes are renamed into place


def test_changed_config_reuses_the_parsed_dataset_only(small_dir, tmp_path):
    prepare_data(*cfgs(small_dir), tmp_path / "cache")
    assert prepare_data(*cfgs(small_dir, n_random=4), tmp_path / "cache").info["cache"] == "dataset"
    assert prepare_data(*cfgs(small_dir, kinds=["time"]), tmp_path / "cache").info["cache"] == "dataset"


def test_changed_input_file_invalidates(small_dir, tmp_path):
    folder = copy_folder(small_dir, tmp_path / "data")
    a = prepare_data(*cfgs(folder), tmp_path / "cache")
    with open(folder / "train_ratings.csv", "a") as f:
        f.write("999999,1,1\n")
    b = prepare_data(*cfgs(folder), tmp_path / "cache")
    assert b.info["cache"] == "miss" and b.fingerprint != a.fingerprint
    assert b.n_users == a.n_users + 1


def test_corrupt_entry_is_rebuilt(small_dir, tmp_path):
    a = prepare_data(*cfgs(small_dir), tmp_path / "cache")
    for f in (tmp_path / "cache").glob("*.npz"):
        f.write_bytes(b"garbage")
    b = prepare_data(*cfgs(small_dir), tmp_path / "cache")
    assert b.info["cache"] == "miss" and np.array_equal(a.train_mask, b.train_mask)


def test_entries_are_mapped_exactly_privately_and_checked(tmp_path):
    arrays = {"ints": np.arange(7, dtype=np.int32), "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
              "text": np.array(["a", "bcd"]), "empty": np.zeros(0, np.int8), "mask": np.array([True, False])}
    save_arrays(tmp_path, "entry", arrays)
    got = load_arrays(tmp_path, "entry")
    for key, a in arrays.items():
        assert got[key].dtype == a.dtype and got[key].shape == a.shape and np.array_equal(got[key], a), key
    got["ints"][0] = 99  # a write stays in this process: the entry is unchanged
    assert load_arrays(tmp_path, "entry")["ints"][0] == 0
    raw = bytearray((tmp_path / "entry.npz").read_bytes())
    raw[raw.index(np.arange(7, dtype=np.int32).tobytes()) + 4] ^= 1  # one bit of the first array's data
    (tmp_path / "entry.npz").write_bytes(bytes(raw))
    assert load_arrays(tmp_path, "entry") is None  # its CRC no longer matches: rebuilt


def test_cache_off_writes_nothing(small_dir, tmp_path):
    d = prepare_data(*cfgs(small_dir), None)
    assert d.info["cache"] == "off" and not (tmp_path / "cache").exists()
