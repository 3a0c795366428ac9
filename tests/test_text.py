"""Item text embeddings (recmovie/data/text.py) and the title-aware sequential model."""
from __future__ import annotations

import numpy as np
import pytest

from recmovie.data import text
from recmovie.data.dataset import build_dataset
from recmovie.errors import ConfigError


def _dataset(titles: dict[int, str], genres: dict[int, list[str]] | None = None):
    items = sorted(titles)
    side = {"title": (np.array(items), np.array([titles[i] for i in items]), "titles.tsv")}
    if genres:
        gi = [i for i in items for _ in genres.get(i, [])]
        side["genre"] = (np.array(gi), np.array([g for i in items for g in genres.get(i, [])]), "genres.tsv")
    users = np.repeat(np.arange(2), len(items))
    return build_dataset(users, np.tile(items, 2), np.arange(2 * len(items)), side=side)


TITLES = {1: "Star Wars (1977)", 2: "Star Trek: The Motion Picture (1979)", 3: "Toy Story (1995)",
          4: "Toy Story 2 (1999)", 5: "Heat (1995)", 6: "", 7: "Casino (1995)"}


def test_texts_join_the_title_and_other_fields_and_leave_empty_titles_empty():
    ds = _dataset(TITLES, {3: ["Animation", "Comedy"], 5: ["Crime"]})
    texts = dict(zip(ds.item_ids.tolist(), text.item_texts(ds, ["title", "genre"])))
    assert texts[3] == "Toy Story (1995). genre: Animation, Comedy"
    assert texts[1] == "Star Wars (1977)" and texts[6] == ""


def test_a_field_the_data_lacks_is_refused_naming_the_key_and_the_file():
    with pytest.raises(ConfigError, match=r"model.text_fields.*names `director`, but the data has no directors.tsv"):
        text.item_texts(_dataset(TITLES), ["title", "director"])


def test_tfidf_puts_titles_that_share_words_together_and_empty_ones_at_zero():
    ds = _dataset(TITLES)
    emb = text.text_embeddings(ds, ["title"], "tfidf", 4)
    by_id = dict(zip(ds.item_ids.tolist(), emb))
    assert emb.shape == (len(TITLES), 4) and emb.dtype == np.float32
    assert np.allclose(by_id[6], 0)  # the empty title
    cos = lambda a, b: float(by_id[a] @ by_id[b])  # rows are unit length
    assert cos(3, 4) > 0.8 and cos(1, 2) > 0.8       # Toy Story / Toy Story 2, Star Wars / Star Trek
    assert cos(3, 4) > cos(3, 1) + 0.5
    assert np.array_equal(emb, text.text_embeddings(ds, ["title"], "tfidf", 4))  # deterministic


def test_embeddings_are_cached_by_the_texts_content(tmp_path, monkeypatch):
    ds = _dataset(TITLES)
    first = text.text_embeddings(ds, ["title"], "tfidf", 4, tmp_path)
    monkeypatch.setattr(text, "tfidf_svd", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    assert np.array_equal(text.text_embeddings(ds, ["title"], "tfidf", 4, tmp_path), first)
    changed = _dataset({**TITLES, 5: "Heat 2 (2026)"})
    with pytest.raises(pytest.fail.Exception, match="recomputed"):  # other titles: another key
        text.text_embeddings(changed, ["title"], "tfidf", 4, tmp_path)


def test_an_unknown_encoder_is_refused_by_key():
    with pytest.raises(ConfigError, match="model.text_encoder"):
        text.text_embeddings(_dataset(TITLES), ["title"], "word2vec", 4)


def test_minilm_embeds_titles_offline():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("all_minilm_l6_v2")
    ds = _dataset(TITLES)
    emb = text.text_embeddings(ds, ["title"], "minilm", 0)
    by_id = dict(zip(ds.item_ids.tolist(), emb))
    assert emb.shape == (len(TITLES), text.MINILM_DIM) and np.allclose(by_id[6], 0)
    assert float(by_id[3] @ by_id[4]) > float(by_id[3] @ by_id[7])


def test_the_title_model_on_data_without_titles_stops_naming_the_key_and_file(tmp_path):
    from recmovie.data.synthetic import generate_synthetic, write_competition_folder
    from recmovie.pipeline import train
    from tests.conftest import make_config

    folder = tmp_path / "train"
    write_competition_folder(generate_synthetic(n_users=40, n_items=30, n_interactions=600, seed=1), folder)
    (folder / "titles.tsv").unlink()
    cfg = make_config(tmp_path / "run", ["data=competition", f"data.dir={folder}", "tracking.enabled=false",
                                         "model=gru4rec_titles", "model.max_epochs=1"])
    with pytest.raises(ConfigError, match="model.text_fields.*no titles.tsv"):
        train(cfg)
    assert not list((tmp_path / "run").rglob("submission.csv"))
