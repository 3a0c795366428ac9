"""S3-Rec: the item2attributes reader, the attribute table, the four pre-training objectives and
the pre-trained encoder's cache."""
from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recmovie.config import CONF_DIR
from recmovie.data.prepare import load_run_data
from recmovie.data.readers import read_competition
from recmovie.errors import ConfigError, DataError
from recmovie.models.base import build_model
from recmovie.models.s3rec import PretrainHeads, attribute_fields, item_attributes
from recmovie.models.sequential import SASRec
from recmovie.schema import Schema
from tests.conftest import make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def folder_with(tmp_path, attributes: str, name: str = "Beauty_item2attributes.json"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train_ratings.csv").write_text("user,item,time\n1,10,1\n1,20,2\n2,20,3\n2,30,4\n")
    (tmp_path / name).write_text(attributes)
    return tmp_path


def test_the_baselines_item2attributes_file_is_the_attribute_field(tmp_path, caplog):
    # item 40 has no interactions: dropped with a warning naming the file, like a .tsv side row
    ds = read_competition(folder_with(tmp_path, json.dumps({"10": [1, 2], "20": [2], "40": [3]})))
    f = ds.side["attribute"]
    pairs = {(int(ds.item_ids[i]), str(f.vocab[v])) for i, v in zip(f.item, f.value)}
    assert pairs == {(10, "1"), (10, "2"), (20, "2")}
    assert "Beauty_item2attributes.json" in caplog.text


@pytest.mark.parametrize("content, problem", [
    ('{"10": [1, 2]', "is not valid JSON"),
    ('[1, 2]', "must hold one object"),
    ('{"ten": [1]}', "item id 'ten' is not an integer"),
    ('{"10": 3}', "item 10: expected a list"),
])
def test_a_bad_item2attributes_file_is_refused_naming_it(tmp_path, content, problem):
    with pytest.raises(DataError, match=problem) as e:
        read_competition(folder_with(tmp_path, content))
    assert "Beauty_item2attributes.json" in str(e.value)


def test_two_attribute_files_are_refused(tmp_path):
    folder = folder_with(tmp_path, '{"10": [1]}')
    (folder / "attributes.tsv").write_text("item\tattribute\n10\tred\n")
    with pytest.raises(DataError, match="both give the items' attributes"):
        read_competition(folder)


def test_auto_attributes_and_the_multi_hot_table(small_dir, tmp_path):
    assert attribute_fields("auto", {"genre", "title"}) == ["genre"]
    assert attribute_fields("auto", {"genre", "attribute"}) == ["attribute"]
    with pytest.raises(ConfigError, match="model.attributes"):
        attribute_fields(["attribute"], {"genre"})
    cfg = make_config(tmp_path, ["data=competition", f"data.dir={small_dir}"])
    data = load_run_data(cfg)
    schema = Schema.from_data(data)
    hot = item_attributes(data, ["genre", "director"], schema)
    genre, director = data.dataset.side["genre"], data.dataset.side["director"]
    assert hot.shape == (data.n_items, len(genre.vocab) + len(director.vocab))
    assert hot.sum() == len(genre.item) + len(director.item)
    i = int(genre.item[0])
    assert set(np.flatnonzero(hot[i, : len(genre.vocab)].numpy())) == set(genre.value[genre.item == i])


def s3rec(cfg, **params):
    return build_model({**OmegaConf.to_container(cfg.model, resolve=True), **params})


def test_pretraining_lowers_its_losses_and_is_cached(small_dir, tmp_path, caplog):
    cfg = make_config(tmp_path, ["data=competition", f"data.dir={small_dir}", "model=s3rec", "model.max_len=20"])
    data = load_run_data(cfg).fit_part()
    schema = Schema.from_data(data)

    def pretrained(seed: int, epochs: int):
        torch.manual_seed(seed)
        model = s3rec(cfg, pretrain_epochs=epochs, pretrain_batch_size=64, dropout=0.1, pretrain_lr=0.003)
        model.build(schema)
        model.pretrain(data)
        return model

    with caplog.at_level(logging.INFO, logger="recmovie.models.s3rec"):
        first = pretrained(0, 8)
    lines = re.findall(r"aap ([\d.]+)  mip ([\d.]+)  map ([\d.]+)  sp ([\d.]+)", caplog.text)
    assert len(lines) == 8
    start, end = np.array(lines[0], float), np.array(lines[-1], float)
    assert end[1] < start[1] and end[3] < start[3], (start, end)  # the item and segment objectives learn
    # the attribute logits' bias starts at each attribute's log-odds among the items
    attrs = item_attributes(data, ["genre"], schema)
    heads = PretrainHeads(8, attrs)
    assert torch.allclose(torch.sigmoid(heads.attribute_bias), attrs.mean(0).clamp(1e-4, 1 - 1e-4), atol=1e-6)
    assert list((tmp_path / "cache").glob("s3rec-*.npz"))

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recmovie.models.s3rec"):
        again = pretrained(0, 8)  # same data, settings and seed: loaded, not pre-trained
    assert "loaded from the cache" in caplog.text and "pre-training epoch" not in caplog.text
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values()):
        assert torch.equal(a, b)
    plain = SASRec(max_len=20)
    plain.build(schema)
    assert set(first.state_dict()) == set(plain.state_dict())  # the fitted model is a SASRec: no heads kept


def test_the_features_groups_item_fields_are_the_attributes(small_dir, tmp_path):
    from recmovie.data.features import run_features

    cfg = make_config(tmp_path, ["data=competition", f"data.dir={small_dir}", "model=s3rec", "features=ids_genre"])
    with pytest.raises(ConfigError, match="features.user"):
        build_model(OmegaConf.to_container(cfg.model, resolve=True), features=run_features(cfg))
    cfg = make_config(tmp_path, ["data=competition", f"data.dir={small_dir}", "model=s3rec", "features.item=[director]"])
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), features=run_features(cfg))
    assert model.params.attributes == ["director"]


def test_the_attribute_field_serves_the_features_group(tmp_path):
    from recmovie.data.features import FeatureSet, item_field_codes, resolve_features

    folder = folder_with(tmp_path, json.dumps({"10": [7], "20": [7, 8]}))
    data_cfg = OmegaConf.create({"format": "competition", "dir": str(folder), "name": "competition"})
    features = OmegaConf.to_container(OmegaConf.merge(
        OmegaConf.load(CONF_DIR / "features" / "ids.yaml"), OmegaConf.load(CONF_DIR / "features" / "ids_attribute.yaml")))
    features.pop("defaults")
    assert resolve_features(features, data_cfg)["item"] == ["attribute"]
    (folder / "Beauty_item2attributes.json").unlink()
    with pytest.raises(DataError, match="attributes.tsv"):
        resolve_features(features, data_cfg)
    (folder / "attributes.tsv").write_text("item\tattribute\n10\tred\n30\tblue\n30\tred\n")
    ds = read_competition(folder)
    schema = Schema(n_users=ds.n_users, n_items=ds.n_items, side_vocab={"attribute": list(ds.side["attribute"].vocab)})
    codes = item_field_codes(ds, FeatureSet(item=("attribute",)), schema)["attribute"]
    assert codes.shape == (3, 2) and sorted(codes[2].tolist()) == [0, 1]  # item 30: blue and red


@pytest.mark.parametrize("pretrain_epochs", [0, 2])
def test_aux_weight_keeps_the_objectives_while_fine_tuning_and_the_fitted_model_is_a_sasrec(
        small_dir, tmp_path, monkeypatch, pretrain_epochs):
    from recmovie.models.s3rec import S3Rec
    from recmovie.selection import fit_model
    from recmovie.tracking import Run

    cfg = make_config(tmp_path, ["data=competition", f"data.dir={small_dir}", "model=s3rec", "model.max_len=20",
                                 "tracking.enabled=false"])
    data = load_run_data(cfg)
    schema = Schema.from_data(data)
    calls = []
    original = S3Rec.pretrain_losses

    def counted(self, *args, with_sp=True):
        calls.append(with_sp)
        return original(self, *args, with_sp=with_sp)

    monkeypatch.setattr(S3Rec, "pretrain_losses", counted)

    def fitted(aux_weight: float):
        calls.clear()
        torch.manual_seed(0)
        model = s3rec(cfg, pretrain_epochs=pretrain_epochs, pretrain_batch_size=64, aux_weight=aux_weight,
                      max_epochs=2, batch_size=64)
        model.build(schema)
        return fit_model(model, data, cfg, Run()).model, list(calls)

    plain_fit, plain_calls = fitted(0.0)
    aux_fit, aux_calls = fitted(0.5)
    assert False not in plain_calls  # aux_weight 0: the paper's two stages, nothing kept while fine-tuning
    assert aux_calls.count(False) >= 2  # every fine-tuning step: AAP, MIP and MAP, without SP
    # the objectives changed what was learned, and were dropped with their heads at the end of the fit
    assert not torch.equal(plain_fit.item_emb.weight, aux_fit.item_emb.weight)
    plain = SASRec(max_len=20)
    plain.build(schema)
    assert set(aux_fit.state_dict()) == set(plain.state_dict())
    again = type(aux_fit).from_checkpoint(aux_fit.checkpoint())
    assert set(again.state_dict()) == set(plain.state_dict())
    with pytest.raises(ConfigError, match="model.aux_weight"):
        s3rec(cfg, aux_weight=-1.0)


def test_the_same_seed_fine_tunes_to_the_same_model_whether_the_encoder_was_cached_or_not(small_dir, tmp_path, caplog):
    from recmovie.selection import fit_model
    from recmovie.tracking import Run

    cfg = make_config(tmp_path, ["data=competition", f"data.dir={small_dir}", "model=s3rec", "model.max_len=20",
                                 "tracking.enabled=false"])
    data = load_run_data(cfg)
    schema = Schema.from_data(data)

    def fitted():
        torch.manual_seed(0)
        model = s3rec(cfg, pretrain_epochs=2, pretrain_batch_size=64, max_epochs=2, batch_size=64)
        model.build(schema)
        return fit_model(model, data, cfg, Run()).model

    first = fitted()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recmovie.models.s3rec"):
        second = fitted()
    assert "loaded from the cache" in caplog.text
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
