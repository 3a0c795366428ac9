"""A run end to end through the Python API: outputs, MLflow contents, reload without retraining."""
from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from omegaconf import open_dict

from recmovie.errors import ConfigError
from recmovie.pipeline import predict, train
from tests.conftest import make_config


def _runs(cfg):
    mlflow.set_tracking_uri(cfg.tracking.uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_train_writes_submission_and_a_complete_mlflow_run(small_config):
    cfg = small_config(["model=ease", "model.l2=50"])
    recall = train(cfg)
    assert 0.0 < recall <= 1.0
    sub = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")
    assert list(sub.columns) == ["user", "item"]
    assert (sub.groupby("user").size() == 10).all()
    assert sub.groupby("user")["item"].nunique().eq(10).all()

    (run,) = _runs(cfg)
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    assert tags["model"] == "ease" and tags["data_fingerprint"] == params["data_fingerprint"]
    assert params["model.l2"] == "50" and params["split.n_last"] == "2"
    for name in ["recall_at_10", "ndcg_at_10", "recall_at_10_last", "recall_at_10_random", "fit_seconds", "predict_seconds"]:
        assert name in metrics
    assert metrics["val_recall_at_10"] == pytest.approx(recall)  # what sweeps select on
    assert metrics["recall_at_10"] != pytest.approx(recall)  # the test part: reported, never selected on
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"submission.csv", "candidates.csv", "config.yaml", "model"} <= names
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]


def test_predict_reloads_the_run_and_reproduces_its_submission(small_config, tmp_path):
    cfg = small_config(["model=itemknn"])
    train(cfg)
    (run,) = _runs(cfg)
    first = pd.read_csv(f"{cfg.paths.output_dir}/submission.csv")

    pcfg = make_config(tmp_path / "p", [f"run_id={run.info.run_id}"], config_name="predict")
    with open_dict(pcfg):
        pcfg.tracking.uri = cfg.tracking.uri
        pcfg.paths.cache_dir = cfg.paths.cache_dir
    out = predict(pcfg)
    pd.testing.assert_frame_equal(pd.read_csv(out), first)

    pcfg = make_config(tmp_path / "c", [f"checkpoint={run.data.tags['checkpoint']}", "split_name=none"], config_name="predict")
    out = predict(pcfg)
    again = pd.read_csv(out)
    assert again["user"].nunique() == first["user"].nunique()


def test_predict_re_ranks_another_runs_candidates(small_config, tmp_path):
    cfg = small_config(["model=popularity", "candidates.n=20"])
    train(cfg)
    (cheap,) = _runs(cfg)
    candidates = pd.read_csv(f"{cfg.paths.output_dir}/candidates.csv")
    cfg = small_config(["model=itemknn"])
    train(cfg)
    knn = next(r for r in _runs(cfg) if r.info.run_id != cheap.info.run_id)

    def predicted(source, out):
        pcfg = make_config(tmp_path / out, [f"run_id={knn.info.run_id}", f"candidates_from={source}"],
                           config_name="predict")
        with open_dict(pcfg):
            pcfg.tracking.uri = cfg.tracking.uri
            pcfg.paths.cache_dir = cfg.paths.cache_dir
        return pd.read_csv(predict(pcfg))

    got = predicted(cheap.info.run_id, "p")
    # every recommendation is one of the user's 20 popularity candidates, in the kNN's order: not
    # popularity's own top 10 for every user
    pairs = set(zip(candidates.user, candidates.item))
    assert all((u, i) in pairs for u, i in zip(got.user, got.item))
    top10 = candidates[candidates["rank"] <= 10]
    assert set(zip(got.user, got.item)) != set(zip(top10.user, top10.item))
    # the same from the file, and too few candidates or an unknown run are refused by key
    pd.testing.assert_frame_equal(predicted(_write(candidates, tmp_path / "all.csv"), "f"), got)
    with pytest.raises(ConfigError, match="candidates_from.*fewer than 10"):
        predicted(_write(candidates[candidates["rank"] <= 5], tmp_path / "short.csv"), "s")
    with pytest.raises(ConfigError, match="candidates_from"):
        predicted("0123456789abcdef", "u")


def _write(df: pd.DataFrame, path) -> str:
    df.to_csv(path, index=False)
    return str(path)


def test_a_crash_marks_the_run_failed_with_its_traceback(small_config, monkeypatch):
    cfg = small_config(["model=popularity"])

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("recmovie.pipeline.rank", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(cfg)
    (run,) = _runs(cfg)
    assert run.info.status == "FAILED"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="traceback.txt")
    assert "disk on fire" in open(path).read()


def test_a_store_that_cannot_be_opened_stops_the_run_before_the_fit(small_config, tmp_path, monkeypatch):
    from omegaconf import open_dict

    from recmovie.errors import TrackingError

    (tmp_path / "a_file").write_text("not a folder")
    cfg = small_config(["model=ease"])
    with open_dict(cfg):
        cfg.tracking.uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"
    fitted = []
    monkeypatch.setattr("recmovie.pipeline.fit_model", lambda *a, **k: fitted.append(1))
    with pytest.raises(TrackingError, match="cannot open the MLflow store"):
        train(cfg)
    assert not fitted and not (tmp_path / "out" / "submission.csv").exists()


def test_tune_chooses_the_grid_value_on_validation_and_logs_it(small_config, monkeypatch):
    import recmovie.pipeline as pipeline

    cfg = small_config(["model=itemknn", "tune=true", "model.tune.k=[5,100]", "tune_extra_points=0"])
    train(cfg)
    (run,) = _runs(cfg)
    chosen = run.data.tags["tuned"]
    assert chosen in ("k=5", "k=100") and run.data.params["model.k"] == chosen.split("=")[1]
    table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="tune.csv"))
    assert list(table.k) == [5, 100]
    best = table.loc[table.val_recall_at_10.idxmax()]
    assert chosen == f"k={int(best.k)}" and run.data.metrics["val_recall_at_10"] == pytest.approx(best.val_recall_at_10)

    # a value set on the command line is kept as given; tune=false keeps the YAML's
    monkeypatch.setattr(pipeline, "hydra_context", lambda: {"overrides": ["model.k=7"]})
    assert pipeline.tune_grid(small_config(["model=itemknn", "tune=true", "model.k=7"]),
                              pipeline.build_model({"_target_": "recmovie.models.neighbourhood.ItemKNN"}),
                              ["model.k=7"]) == {}
    with pytest.raises(pipeline.ConfigError, match="model.tune"):
        pipeline.tune_grid(small_config(["model=itemknn", "tune=true", "model.tune.k=5"]),
                           pipeline.build_model({"_target_": "recmovie.models.neighbourhood.ItemKNN"}), [])
