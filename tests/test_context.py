"""The context-aware family: feature sets and their checks, the fields view, FM's decomposed
ranking against the brute-force FM, DeepFM / Wide&Deep item blocks, and a short end-to-end run."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recmovie.config import CONF_DIR
from recmovie.data.features import (FeatureSet, field_size, item_field_codes, resolve_features,
                                    user_field_codes)
from recmovie.data.prepare import prepare_data
from recmovie.data.views import fields
from recmovie.errors import ConfigError, DataError
from recmovie.models.base import build_model
from recmovie.models.context import FM, AutoInt, DeepFM, WideDeep
from recmovie.schema import Schema
from tests.conftest import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = {"name": "all", "item": ["genre", "era", "decade", "director", "writer", "title"],
       "user": ["top_genres", "activity"]}


def features(name: str) -> dict:
    """A features group file with its `ids` defaults merged in, as Hydra composes it."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "features" / "ids.yaml"),
                          OmegaConf.load(CONF_DIR / "features" / f"{name}.yaml"))
    return {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "defaults"}


@pytest.fixture(scope="module")
def data(small_dir):
    cfg = OmegaConf.create({"format": "competition", "dir": str(small_dir), "name": "competition"})
    return prepare_data(cfg, OmegaConf.create({"name": "competition", "n_last": 2, "n_random": 8, "seed": 1}),
                        OmegaConf.create({"kinds": []}), None)


def built(cls, data, feats, **params):
    """A model with random weights (every table, linear ones included) and its item codes set."""
    torch.manual_seed(0)
    model = cls(features=feats, **params)
    schema = Schema.from_data(data)
    model.build(schema)
    for f, codes in item_field_codes(data.dataset, model.fs, schema).items():
        setattr(model, f"codes_{f}", torch.from_numpy(codes))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3)
            if name.endswith(".weight") and "tables" in name:  # keep the padding rows at zero
                p[-1] = 0.0
    return model.eval()


def test_the_feature_groups_compose_and_validate():
    assert features("ids")["item"] == [] and features("all")["optional"] == ["director", "writer"]
    assert features("ids_genre")["item"] == ["genre"] and features("ids_era")["item"] == ["era"]
    with pytest.raises(ConfigError, match="features.item.*unknown field"):
        FeatureSet.from_config({"item": ["colour"]})
    with pytest.raises(ConfigError, match="features.title_buckets"):
        FeatureSet.from_config({"title_buckets": 0})


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "features").glob("*.yaml")))
def test_every_feature_set_composes_through_hydra(tmp_path, name):
    cfg = make_config(tmp_path, [f"features={name}"])
    assert cfg.features.name == name
    assert OmegaConf.to_container(cfg.features) == features(name)


def test_a_feature_set_that_needs_a_missing_side_file_stops_before_any_work(tmp_path, small_dir, caplog):
    folder = tmp_path / "no_genres"
    shutil.copytree(small_dir, folder)
    (folder / "genres.tsv").unlink()
    data_cfg = OmegaConf.create({"format": "competition", "dir": str(folder), "name": "competition"})
    with pytest.raises(DataError, match=r"genres\.tsv.*features=ids_genre"):
        resolve_features(features("ids_genre"), data_cfg)
    with caplog.at_level(logging.WARNING):  # directors are optional in `all`, genres are not
        (folder / "directors.tsv").unlink()
        with pytest.raises(DataError, match="features=all reads field 'genre'"):
            resolve_features(features("all"), data_cfg)
    shutil.copy(small_dir / "genres.tsv", folder / "genres.tsv")
    with caplog.at_level(logging.WARNING):
        used = resolve_features(features("all"), data_cfg)
    assert "director" not in used["item"] and "writer" in used["item"] and "directors.tsv" in caplog.text

    (folder / "genres.tsv").unlink()
    cfg = make_config(tmp_path, ["data=competition", f"data.dir={folder}", "model=fm", "features=ids_genre"])
    from recmovie.pipeline import train

    with pytest.raises(DataError, match="genres.tsv"):
        train(cfg)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing read or written


def test_a_model_without_features_refuses_a_feature_set():
    spec = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "ease.yaml"))
    assert build_model(spec, features=features("ids")).params == {"l2": 500.0, "dtype": "float32"}
    with pytest.raises(ConfigError, match="ease reads no side features"):
        build_model(spec, features=features("ids_genre"))
    fm = build_model(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "fm.yaml")), loss="bce",
                     features=features("ids_era"))
    assert fm.params.loss == "bce" and fm.fs.item == ("era",)


def test_item_and_user_codes(data):
    fs = FeatureSet.from_config(ALL)
    schema = Schema.from_data(data)
    codes = item_field_codes(data.dataset, fs, schema)
    years = data.dataset.item_years()
    era = codes["era"][:, 0]
    assert np.array_equal(era[years < 1920], np.zeros((years < 1920).sum()))
    assert (era[years >= 2000] == 5).all() and (era[(years >= 1980) & (years < 2000)] == 4).all()
    genre = data.dataset.side["genre"]
    for item in (0, 7, 33):
        expected = set(genre.value[genre.item == item])
        pad = field_size("genre", fs, schema)
        assert set(codes["genre"][item]) - {pad} == expected
    # the user's top genres: their most frequent genres in the history, ties by code
    m = data.train_matrix
    users = user_field_codes(m.indptr, m.indices, fs, codes["genre"], field_size("genre", fs, schema))
    u = 5
    counts = np.zeros(len(genre.vocab))
    for item in m.indices[m.indptr[u]:m.indptr[u + 1]]:
        counts[genre.value[genre.item == item]] += 1
    assert list(users["top_genres"][u]) == list(np.argsort(-counts, kind="stable")[:3])
    assert users["activity"][u, 0] == int(np.log2(m.indptr[u + 1] - m.indptr[u] + 1))


def test_the_fields_view_carries_the_codes_of_its_rows(data):
    schema = Schema.from_data(data)
    batch = next(iter(fields(data, 64, n_negatives=3, features=ALL, schema=schema)))
    codes = item_field_codes(data.dataset, FeatureSet.from_config(ALL), schema)
    assert batch.items.shape == (64, 4) and batch.item_fields["title"].shape[:2] == (64, 4)
    assert torch.equal(batch.item_fields["genre"], torch.from_numpy(codes["genre"])[batch.items])
    held = set(zip(data.train_user.tolist(), data.train_item.tolist()))
    assert all((u, i) in held for u, i in zip(batch.users.tolist(), batch.items[:, 0].tolist()))
    assert not any((u, i) in held for u, row in zip(batch.users.tolist(), batch.items[:, 1:].tolist()) for i in row)


def brute_force_fm(model: FM, user: int, history: np.ndarray, item: int) -> float:
    """Rendle's FM over the explicit feature vector x of the pair: one block of features per field
    (user id, user fields, item id, item fields), x_j = 1 / bag size on a bag's values."""
    fs = model.fs
    batch_user = user_field_codes(np.array([0, len(history)]), history, fs,
                                  getattr(model, "codes_genre", torch.zeros(0, 1, dtype=torch.int64)).numpy(),
                                  model.sizes.get("top_genres", 1))
    feats = []  # (x_j, v_j, w_j)
    sides = {"user": {"user": np.array([user]), **{f: batch_user[f][0] for f in fs.user}},
             "item": {"item": np.array([item]), **{f: getattr(model, f"codes_{f}")[item].numpy() for f in fs.item}}}
    for side, codes in sides.items():
        for f, bag in codes.items():
            bag = bag[bag != model.sizes[f]]  # padding
            for c in bag:
                feats.append((1.0 / len(bag), model.emb[side].tables[f].weight[c].double(),
                              float(model.lin[side].tables[f].weight[c, 0])))
    score = float(model.bias) + sum(x * w for x, _, w in feats)
    for a in range(len(feats)):
        for b in range(a + 1, len(feats)):
            score += feats[a][0] * feats[b][0] * float(feats[a][1] @ feats[b][1])
    return score


def test_fm_decomposed_ranking_equals_the_brute_force_fm(data):
    model = built(FM, data, ALL, dim=4)
    users = np.array([0, 3, 11])
    batch = data.user_batch(users)
    with torch.no_grad():
        full = model.score(batch)
    m = data.train_matrix
    for r, u in enumerate(users):
        history = m.indices[m.indptr[u]:m.indptr[u + 1]]
        for item in (0, 5, 17, data.n_items - 1):
            with torch.no_grad():
                expected = brute_force_fm(model, int(u), history, item)
            assert full[r, item].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


DEEP = [(DeepFM, {"hidden": [16, 8]}), (WideDeep, {"hidden": [16, 8]}),
        (AutoInt, {"att_layers": 1, "heads": 2, "att_dim": 4}), (AutoInt, {"att_layers": 2, "heads": 2, "att_dim": 4})]


@pytest.mark.parametrize("cls, params", DEEP, ids=lambda v: getattr(v, "__name__", str(v)))
def test_deep_models_score_the_same_in_any_item_blocks(data, cls, params):
    batch = data.user_batch(np.arange(40))
    with torch.no_grad():
        small = built(cls, data, ALL, dim=8, score_budget_mb=1, **params)
        large = built(cls, data, ALL, dim=8, score_budget_mb=4096, **params)
        assert small.item_block(10_000) < data.n_items <= large.item_block(40)
        a, b = small.score(batch), large.score(batch)
        assert torch.allclose(a, b, atol=1e-5)
        items = torch.from_numpy(np.random.default_rng(0).integers(0, data.n_items, (40, 7)))
        assert torch.allclose(small.score_items(batch, items), a.gather(1, items), atol=1e-5)


def test_autoint_one_layer_products_equal_the_attention_over_both_sides(data):
    """AutoInt's one-layer paths (products between the sides' projections; the fused ranking
    kernel) against torch's attention over the concatenated fields, in the ranking and in the
    training layout."""
    model = built(AutoInt, data, ALL, dim=8, att_layers=1, heads=2, att_dim=4)
    n_user, n_item = len(model.sides["user"]), len(model.sides["item"])
    gen = torch.Generator().manual_seed(0)
    for hu_shape, hi_shape in (((5, 1), (1, 7)), ((5, 1), (5, 3))):
        hu = torch.randn(*hu_shape, n_user, 32, generator=gen)
        hi = torch.randn(*hi_shape, n_item, 32, generator=gen)
        lead = torch.broadcast_shapes(hu_shape, hi_shape)
        x = torch.cat([hu.expand(*lead, n_user, 32), hi.expand(*lead, n_item, 32)], -2)
        with torch.no_grad():
            expected = model.out(model.attend(x.reshape(-1, n_user + n_item, 32)).flatten(-2)).reshape(lead)
            assert torch.allclose(model.first_layer_scores(hu, hi), expected, atol=1e-5)
            if hi_shape[0] == 1:  # ranking: the fused CPU kernel adds the same scores
                out = torch.ones(lead)
                model.add_deep_scores(out, hu[:, 0], hi[0])
                assert torch.allclose(out, 1 + expected, atol=1e-5)


@pytest.mark.slow
def test_fm_with_side_features_trains_end_to_end_and_beats_popularity(small_config):
    from recmovie.pipeline import train

    pop = train(small_config(["model=popularity", "tracking.enabled=false"]))
    fm = train(small_config(["model=fm", "features=all", "tracking.enabled=false", "model.max_epochs=8",
                             "model.batch_size=1024"]))
    assert fm > pop
