"""Bad inputs and faults, as a user meets them: each case checks the one-line message, the exit
status, and that nothing half-written is left (no submission, no temporary or corrupt file, a
later valid run still works). Entry-point behaviour is run in-process through `run_cli` (what
train.py/predict.py call) to stay fast; what needs a real process (kill -9, two runs at once, a
Korean folder name through Hydra's parser) runs train.py in subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from recmovie.cli import INTERRUPTED, quote_overrides, run_cli
from recmovie.data.synthetic import generate_synthetic, write_competition_folder
from recmovie.errors import ConfigError
from recmovie.pipeline import predict, train
from tests.conftest import REPO, make_config

TINY = dict(n_users=60, n_items=50, n_interactions=1500, seed=1)
GOOD_RATINGS = "user,item,time\n" + "".join(f"{u},{i},{100 * u + i}\n" for u in range(1, 31) for i in range(1, 26)
                                            if (u * 7 + i) % 3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "train"
    write_competition_folder(generate_synthetic(**TINY), folder)
    return folder


def config(tmp_path: Path, data_dir: Path, *overrides: str, config_name: str = "train"):
    data = [] if config_name != "train" else ["data=competition", f"data.dir={data_dir}"]
    return make_config(tmp_path, [*data, *overrides], config_name=config_name)


def fails(fn, cfg, capsys, status: int = 2) -> str:
    """Run fn(cfg) as the entry points do; the exit status and the one line printed."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(fn, cfg)
    assert e.value.code == status
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def runs(tmp_path: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files of atomic writes (a half-written file would be one)."""
    return [p for f in folders if f.exists() for p in f.rglob("*.tmp")]


def assert_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not (out / "submission.csv").exists() and not (out / "candidates.csv").exists()
    assert not leftovers(out, tmp_path / "cache")


def write_folder(folder: Path, files: dict[str, bytes | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


# ------------------------------------------------------------------ bad input files

R = "train_ratings.csv"
BAD_FILES = [
    ({R: "user,item\n1,2\n"}, f"{R}, line 1: missing column(s) 'time'"),
    ({R: ""}, f"{R}: empty file"),
    ({R: "user,item,time\n"}, f"{R}: has a header but no data rows"),
    ({R: "user,item,time\n1,2,3\n1,x,4\n"}, f"{R}, line 3: column 'item' has 'x', expected an integer"),
    ({R: "user,item,time\n1,2,3\n1,NaN,4\n"}, f"{R}, line 3: column 'item' is empty or NaN"),
    ({R: "user,item,time\n1,2,3\n1,2,3,4\n"}, f"{R}, line 3: has 4 field(s), expected 3"),
    ({R: "user,item,time\n1,2,3\n1,99999999999999999999999,4\n"}, f"{R}, line 3: column 'item' has "
     "'99999999999999999999999', beyond the 64-bit integer range"),
    ({R: "user,item,time\n1,2,3\n1,\u0663,4\n"}, f"{R}, line 3: column 'item' has '\u0663', expected an integer (digits 0-9)"),
    ({R: "user,item,time\n1,2,3\n1,\uff13,4\n"}, f"{R}, line 3: column 'item' has '\uff13', expected an integer"),
    ({R: b"user,item,time\n1,2,3\n1,3\xe9,4\n"}, f"{R}, line 3: byte 0xe9 is not utf-8 text"),
    ({R: "user,item,time\n1,2,3\n".encode("utf-16")}, f"{R}, line 1: byte 0xff is not utf-8 text"),
    ({"titles.tsv": 'item\ttitle\n1\tA\n2\t"Unclosed\n3\tC\n'},
     "titles.tsv, line 3: the '\"' at the start of '\"Unclosed' is never closed"),
    ({"genres.tsv": b"item\tgenre\n1\tCom\xe9die\n"}, "genres.tsv, line 2: byte 0xe9 is not utf-8 text"),
    ({"years.tsv": "id\tyear\n1\t1999\n"}, "years.tsv, line 1: missing column(s) 'item'"),
]


@pytest.mark.parametrize("files, message", BAD_FILES, ids=range(len(BAD_FILES)))
def test_a_bad_input_file_stops_the_run_in_one_line_naming_file_and_line(tmp_path, capsys, files, message):
    folder = write_folder(tmp_path / "data", {R: GOOD_RATINGS, **files})
    # untracked, to stay fast (test_cli checks that a data error marks its run FAILED)
    err = fails(train, config(tmp_path, folder, "model=popularity", "tracking.enabled=false"), capsys)
    assert err.startswith(f"error: {folder}/") and message in err, err
    assert_nothing_written(tmp_path)


def test_a_missing_interactions_file_and_a_file_for_a_folder(tmp_path, capsys):
    folder = write_folder(tmp_path / "data", {"titles.tsv": "item\ttitle\n1\tA\n"})
    assert f"error: {folder / R}: file not found" == fails(train, config(tmp_path, folder), capsys)
    (tmp_path / "a_file").write_text("x")
    err = fails(train, config(tmp_path, tmp_path / "a_file"), capsys)
    assert err == f"error: config `data.dir`: folder not found: {tmp_path / 'a_file'}"
    assert_nothing_written(tmp_path)


def test_a_user_with_fewer_unseen_items_than_k_stops_before_the_fit(tmp_path, capsys, monkeypatch):
    # a catalogue of 12 items; user 99 has seen 11 of them
    rows = "".join(f"{u},{i},{10 * u + i}\n" for u in range(1, 30) for i in range(1, 13) if (u + i) % 3 == 0)
    folder = write_folder(tmp_path / "data", {R: "user,item,time\n" + rows + "".join(f"99,{i},{i}\n" for i in range(1, 12))})
    fitted = []
    monkeypatch.setattr("recmovie.pipeline.fit_model", lambda *a, **k: fitted.append(1))
    err = fails(train, config(tmp_path, folder, "model=popularity", "split=none"), capsys)
    assert err.startswith("error: ") and "have fewer than 10 unseen items to recommend" in err
    assert "user 99 has seen 11 of the 12 items" in err and "lower eval.k" in err
    assert not fitted
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------ wrong config values

BAD_VALUES = [
    (["model=ease", "model.l2=abc"], "config `model.l2`: must be a number, got 'abc'"),
    (["model=multivae", "model.dropout=true"], "config `model.dropout`: must be a number, got True"),
    (["model=multivae", "model.latent=1.5"], "config `model.latent`: must be an integer"),
    (["seed=abc"], "config `seed`: must be an integer, got 'abc'"),
    (["split.seed=x"], "config `split.seed`: must be an integer"),
    (["eval.k=0"], "config `eval.k`: must be an integer >= 1, got 0"),
    (["candidates.n=abc"], "config `candidates.n`: must be an integer >= 1, got 'abc'"),
    (["loader.num_workers=-1"], "config `loader.num_workers`: must be an integer >= 0, got -1"),
    (["model=multivae", "trainer.max_epochs=abc"], "config `trainer.max_epochs`: must be an integer >= 1 or null"),
    (["model=multivae", "+trainer.max_epoch=1"], "config `trainer.max_epoch`: not an argument of Lightning's Trainer"),
    (["confidence=time", "confidence.time.floor=x"], "config `confidence.time.floor`: must be a number, got 'x'"),
    (["split.n_last=-2"], "config `split.n_last`: must be an integer >= 0"),
    (["refit=maybe"], "config `refit`: must be auto, true or false"),
    (["save_val_model=1"], "config `save_val_model`: must be true or false, got 1"),
    (["model=ease", "loss=bpr"], "config `loss`: model ease has no loss to choose"),
    (["data.cache=yes"], "config `data.cache`: must be true or false, got 'yes'"),
]


@pytest.mark.parametrize("overrides, message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_a_wrong_config_value_names_its_key_before_any_work(tmp_path, capsys, tiny_dir, overrides, message):
    err = fails(train, config(tmp_path, tiny_dir, *overrides), capsys)
    assert err == f"error: {message}" or err.startswith(f"error: {message}"), err
    assert not (tmp_path / "mlruns").exists() or not runs(tmp_path)  # refused before the run opened
    assert_nothing_written(tmp_path)


def test_a_trainer_that_cannot_run_here_is_one_config_error(tmp_path, capsys, tiny_dir):
    err = fails(train, config(tmp_path, tiny_dir, "model=multivae", "trainer.accelerator=mps"), capsys)
    assert err.startswith("error: config `trainer`: ")
    assert_nothing_written(tmp_path)


def test_korean_and_other_unquotable_values_are_quoted_for_hydra():
    assert quote_overrides(["data.dir=/data/데이터", "model=ease", "model.beta=0.1,0.2", "-m", "x=[1,2]"]) == [
        "data.dir='/data/데이터'", "model=ease", "model.beta=0.1,0.2", "-m", "x=[1,2]"]
    assert quote_overrides(["data.dir=/a'b/데이터"]) == ['data.dir="/a\'b/데이터"']


# ------------------------------------------------------------------ the cache

def test_a_cache_entry_with_the_wrong_arrays_is_rebuilt(tmp_path, capsys, tiny_dir):
    cfg = config(tmp_path, tiny_dir, "model=popularity", "tracking.enabled=false")
    run_cli(train, cfg)
    first = pd.read_csv(tmp_path / "out" / "submission.csv")
    entries = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 2
    for entry in entries:  # valid .npz files, other arrays
        with open(entry, "wb") as f:
            np.savez(f, foo=np.arange(3))
    run_cli(train, cfg)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "submission.csv"), first)
    for entry in entries:
        assert "user" in np.load(entry) or "train_mask" in np.load(entry)  # rewritten whole


def test_a_prepared_entry_of_another_dataset_is_rebuilt(tmp_path, tiny_dir):
    cfg = config(tmp_path, tiny_dir, "model=popularity", "tracking.enabled=false")
    run_cli(train, cfg)
    (prepared,) = (tmp_path / "cache").glob("prepared-*.npz")
    arrays = dict(np.load(prepared))
    arrays["train_mask"] = arrays["train_mask"][:-5]  # the right keys, the wrong length
    with open(prepared, "wb") as f:
        np.savez(f, **arrays)
    run_cli(train, cfg)
    assert len(np.load(prepared)["train_mask"]) == len(arrays["val_mask"])


@pytest.mark.parametrize("kind", ["a file where the folder should be", "inside a file"])
def test_a_cache_that_cannot_be_written_is_skipped_with_a_warning(tmp_path, tiny_dir, caplog, kind):
    (tmp_path / "blocker").write_text("x")
    cache = tmp_path / "blocker" if kind.startswith("a file") else tmp_path / "blocker" / "sub"
    cfg = config(tmp_path, tiny_dir, "model=popularity", "tracking.enabled=false")
    with open_dict(cfg):
        cfg.paths.cache_dir = str(cache)
    run_cli(train, cfg)
    assert (tmp_path / "out" / "submission.csv").is_file()
    assert "cannot write the cache entry" in caplog.text and "going on without it" in caplog.text


def test_an_orphan_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    code = ("import os, sys; from recmovie.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half'); os.kill(os.getpid(), 9)\n")
    p = subprocess.run([sys.executable, "-c", code, str(folder / "entry.npz")], cwd=REPO)
    assert p.returncode == -signal.SIGKILL
    (orphan,) = leftovers(folder)
    assert not (folder / "entry.npz").exists()
    from recmovie.data.cache import save_arrays
    from recmovie.io import ORPHAN_AGE_S

    save_arrays(folder, "other", {"a": np.arange(2)})
    assert orphan.exists()  # young: its writer might be on another machine
    old = time.time() - ORPHAN_AGE_S - 5
    os.utime(orphan, (old, old))
    save_arrays(folder, "other", {"a": np.arange(2)})
    assert not leftovers(folder) and (folder / "other.npz").is_file()


# ------------------------------------------------------------------ outputs

def test_outputs_are_created_with_the_users_umask(tmp_path, tiny_dir):
    old = os.umask(0o022)
    try:
        run_cli(train, config(tmp_path, tiny_dir, "model=popularity"))
    finally:
        os.umask(old)
    for name in ("submission.csv", "candidates.csv", "val_candidates.csv"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644
    (run,) = runs(tmp_path)
    assert Path(run.data.tags["checkpoint"]).stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ predict

def test_predict_refuses_unfinished_runs_and_non_checkpoints_and_leaves_no_copy(tmp_path, capsys, tiny_dir, monkeypatch):
    import tempfile

    cfg = config(tmp_path, tiny_dir, "model=itemknn")
    run_cli(train, cfg)
    (good,) = runs(tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        m.setattr("recmovie.pipeline.rank", boom)
        with pytest.raises(RuntimeError):
            run_cli(train, config(tmp_path, tiny_dir, "model=itemknn"))
    failed = next(r for r in runs(tmp_path) if r.info.status == "FAILED")

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))

    def pcfg(*overrides):
        c = make_config(tmp_path / "p", list(overrides), config_name="predict")
        with open_dict(c):
            c.tracking.uri, c.paths.cache_dir = cfg.tracking.uri, cfg.paths.cache_dir
        return c

    run_cli(predict, pcfg(f"run_id={good.info.run_id}"))
    assert (tmp_path / "p" / "out" / "submission.csv").is_file() and not list(temp.iterdir())
    err = fails(predict, pcfg(f"run_id={failed.info.run_id}"), capsys)
    assert err == f"error: config `run_id`: run {failed.info.run_id} is FAILED, not FINISHED (RuntimeError: disk on fire)"
    err = fails(predict, pcfg("run_id=0123abc"), capsys)
    assert err.startswith("error: config `run_id`: no MLflow run '0123abc' in sqlite:///")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    err = fails(predict, pcfg(f"checkpoint={tmp_path / 'junk.pt'}"), capsys)
    assert err.startswith(f"error: {tmp_path / 'junk.pt'}: not a recmovie checkpoint")
    err = fails(predict, pcfg(f"checkpoint={tmp_path / 'none.pt'}"), capsys)
    assert err == f"error: {tmp_path / 'none.pt'}: checkpoint not found"
    assert not list(temp.iterdir())


# ------------------------------------------------------------------ the tracking store

@pytest.mark.slow
def test_a_read_only_store_stops_the_run_before_the_fit_in_one_line(tmp_path, tiny_dir):
    run_cli(train, config(tmp_path / "first", tiny_dir, "model=popularity"))  # the store exists
    db = tmp_path / "first" / "mlruns" / "mlflow.db"
    uri = f"sqlite:///file:{db}?mode=ro&uri=true"  # SQLite's own read-only mode: permissions do not stop root
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "data=competition", f"data.dir={tiny_dir}",
                        "model=popularity", f"tracking.uri='{uri}'", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == (
        f"error: cannot open the MLflow store {uri}: attempt to write a readonly database "
        "(set tracking.uri or MLFLOW_TRACKING_URI, or tracking.enabled=false)")
    assert "model popularity:" not in p.stdout  # stopped before the fit and the report
    assert_nothing_written(tmp_path)


# ------------------------------------------------------------------ interrupted trainings

GRADIENT = ["model=multivae", "model.latent=8", "model.hidden=[16]", "trainer.max_epochs=5",
            "callbacks.early_stopping.patience=10"]


def signal_at(epoch: int, sig: str, marker: Path) -> list[str]:
    return ["+callbacks.fault._target_=tests.fault_helpers.SignalAtEpoch", f"+callbacks.fault.epoch={epoch}",
            f"+callbacks.fault.signal={sig}", f"+callbacks.fault.marker={marker}"]


def resume(tmp_path: Path, run_id: str):
    return make_config(tmp_path, [f"resume={run_id}"])


@pytest.mark.parametrize("sig", ["INT", "TERM"])
def test_an_interrupted_training_is_killed_and_resumes_to_the_uninterrupted_result(tmp_path, capsys, tiny_dir, sig,
                                                                                   one_torch_thread, request):
    # a job a shell starts in the background (`pytest &`) has Ctrl-C ignored from the start (POSIX),
    # so Python never installs its handler; the test is about Ctrl-C in a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    run_cli(train, config(tmp_path / "plain", tiny_dir, *GRADIENT))
    (plain,) = runs(tmp_path / "plain")

    cfg = config(tmp_path, tiny_dir, *GRADIENT, *signal_at(2, sig, tmp_path / "marker"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(train, cfg)
    assert e.value.code == INTERRUPTED
    lines = capsys.readouterr().err.strip().splitlines()
    (run,) = runs(tmp_path)
    assert lines == [f"the training can go on from its last epoch: python train.py resume={run.info.run_id}",
                     "interrupted (training interrupted)"]
    assert run.info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again
    assert_nothing_written(tmp_path)
    assert (tmp_path / "out" / "checkpoints" / "fit.ckpt").is_file()

    run_cli(train, resume(tmp_path, run.info.run_id))
    (again,) = runs(tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["resumed"] == "1" and again.data.tags["resumed_from_status"] == "KILLED"
    for name in ("val_recall_at_10", "recall_at_10", "best_epoch", "epochs"):
        assert again.data.metrics[name] == pytest.approx(plain.data.metrics[name], abs=1e-6), name
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out" / "submission.csv"),
                                  pd.read_csv(Path(plain.data.tags["output_dir"]) / "submission.csv"))
    assert not (tmp_path / "out" / "checkpoints").exists()  # finished: nothing left to resume
    err = fails(train, resume(tmp_path, run.info.run_id), capsys)
    assert err == f"error: config `resume`: run {run.info.run_id} has FINISHED: nothing to resume"


def test_resume_refuses_other_overrides_and_unknown_runs(tmp_path, capsys, tiny_dir, monkeypatch):
    err = fails(train, resume(tmp_path, "0123abc"), capsys)
    assert err == f"error: config `resume`: no MLflow run '0123abc': there is no store at sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert not (tmp_path / "mlruns").exists()
    run_cli(train, config(tmp_path, tiny_dir, "model=popularity"))
    err = fails(train, resume(tmp_path, "0123abc"), capsys)
    assert err.startswith("error: config `resume`: no MLflow run '0123abc' in sqlite:///")
    (done,) = runs(tmp_path)
    monkeypatch.setattr("recmovie.pipeline.hydra_context",
                        lambda: {"overrides": ["resume=x", "model.beta=0.5", "tracking.uri=y"]})
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    client.set_terminated(done.info.run_id, "FAILED")
    err = fails(train, resume(tmp_path, done.info.run_id), capsys)
    assert err == (f"error: config `resume`: continues run {done.info.run_id} with its own config; drop the other "
                   "overrides (model.beta=0.5)")


@pytest.mark.slow
def test_after_kill_9_the_run_is_recognised_as_stale_and_resumes(tmp_path, capsys, tiny_dir):
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(REPO)}
    db = tmp_path / "mlruns" / "mlflow.db"
    args = [sys.executable, str(REPO / "train.py"), "data=competition", f"data.dir={tiny_dir}", *GRADIENT,
            *signal_at(3, "KILL", tmp_path / "marker"), f"tracking.uri=sqlite:///{db}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"]
    p = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    (run,) = runs(tmp_path)
    assert run.info.status == "RUNNING"  # nobody could close it
    assert_nothing_written(tmp_path)

    from recmovie.tracking import mark_stale_runs

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    assert mark_stale_runs(client) == [run.info.run_id]  # what opening the next run does
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and "ended without closing the run" in run.data.tags["error"]

    cfg = resume(tmp_path, run.info.run_id)
    run_cli(train, cfg)
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.metrics["epochs"] == 5
    assert (tmp_path / "out" / "submission.csv").is_file() and not leftovers(tmp_path / "out", tmp_path / "cache")


# ------------------------------------------------------------------ two runs at once

@pytest.mark.slow
def test_two_runs_started_together_on_a_fresh_store_keep_their_own_outputs(tmp_path, tiny_dir):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    go = tmp_path / "go"
    # both wait for the same instant, so they start in the same second on a store neither has created
    wait = f"import time, pathlib\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
    code = wait + f"import runpy, sys\nsys.argv = sys.argv[1:]\nrunpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n"
    jobs = [subprocess.Popen([sys.executable, "-c", code, "train.py", "data=competition", f"data.dir={tiny_dir}",
                              f"model={m}", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for m in ("popularity", "itemknn")]
    time.sleep(1.0)
    go.touch()
    for job in jobs:
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, err[-3000:]
    found = runs(tmp_path)
    assert sorted(r.data.tags["model"] for r in found) == ["itemknn", "popularity"]
    assert all(r.info.status == "FINISHED" for r in found)
    assert len({r.data.tags["output_dir"] for r in found}) == 2
    for r in found:  # each run holds its own submission, the one in its own folder
        logged = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="submission.csv",
                                                     dst_path=str(tmp_path / r.info.run_id),
                                                     tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
        pd.testing.assert_frame_equal(pd.read_csv(logged), pd.read_csv(Path(r.data.tags["output_dir"]) / "submission.csv"))
    assert not leftovers(tmp_path / "outputs", tmp_path / "cache")


@pytest.mark.slow
def test_a_korean_folder_name_needs_no_quotes(tmp_path, tiny_dir):
    folder = write_folder(tmp_path / "데이터", {f.name: f.read_bytes() for f in tiny_dir.iterdir()})
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.run([sys.executable, str(REPO / "train.py"), "data=competition", f"data.dir={folder}",
                        "model=popularity", "tracking.enabled=false"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "submission:" in p.stdout


def test_an_unwritable_run_folder_stops_in_one_line_and_creates_nothing(tmp_path, capsys):
    from recmovie.cli import check_output_folder

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:
        check_output_folder([f"hydra.run.dir={blocker}/run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write the run folder") and str(blocker) in err[0]
    with pytest.raises(SystemExit):
        check_output_folder(["-m", f"hydra.sweep.dir={blocker}/sweep"])
    check_output_folder([f"hydra.run.dir={tmp_path}/fine/run"])  # a writable place passes
    with pytest.raises(SystemExit):  # the default folder under a log_dir that cannot be
        check_output_folder([f"paths.log_dir={blocker}/outputs"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # and nothing was created


def test_a_model_that_cannot_fit_in_memory_stops_before_the_fit_naming_the_figure(tmp_path, tiny_dir, monkeypatch,
                                                                                   capsys):
    import recmovie.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 1000)  # bytes
    monkeypatch.setattr(pipeline, "fit_model", lambda *a, **k: pytest.fail("fitted"))
    with pytest.raises(ConfigError, match=r"EASE needs about .* GB for its .* item matrices.*try .*fewer items"):
        train(config(tmp_path, tiny_dir, "model=ease", "tune=false"))


def test_the_memory_check_counts_the_probe_a_refit_keeps_for_save_val_model(monkeypatch):
    import recmovie.pipeline as pipeline
    from recmovie.models.linear import EASE
    from recmovie.schema import Schema
    from tests.ensemble.helpers import tiny_data

    data = tiny_data({0: [0, 1], 1: [2]}, n_items=100)
    model = EASE()
    need = model.memory_needed(Schema.from_data(data))[0]
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 * need + 1)  # the fit alone: no warning, no error
    pipeline.check_memory(model, data)
    with pytest.raises(ConfigError, match=r"`model`: EASE needs about .* try save_val_model=false, "):
        monkeypatch.setattr(pipeline, "available_memory", lambda: need + 100 ** 2 * 4 - 1)
        pipeline.check_memory(model, data, keeps_probe=True)  # one more 100 x 100 float32 matrix
