"""Member runs: weights by position, model or run; members on other data or splits refused."""
from __future__ import annotations

import pytest

from recmovie.ensemble.members import check_members, member_weights
from recmovie.errors import ConfigError
from tests.ensemble.helpers import fake_run


def test_weights_by_position_model_or_run_and_their_errors():
    runs = [fake_run("r1", "ease"), fake_run("r2", "itemknn"), fake_run("r3", "ease")]
    assert member_weights(None, runs).tolist() == [1, 1, 1]
    assert member_weights([2, 1, 0], runs).tolist() == [2, 1, 0]
    assert member_weights({"ease": 2, "itemknn": 1, "r3": 0.5}, runs).tolist() == [2, 1, 0.5]
    for bad, match in [([1, 2], "2 weight"), ({"ease": 1}, "no weight for member.*r2"),
                       ({"ease": 1, "itemknn": 1, "als": 1}, "als"), ([0, 0, 0], "not all 0"),
                       ([1, -1, 1], ">= 0"), ([1, "x", 1], "numbers")]:
        with pytest.raises(ConfigError, match=match):
            member_weights(bad, runs)


def test_members_on_other_data_or_splits_or_too_few_candidates_are_refused():
    same = dict(data_fingerprint="f1", **{"split.name": "competition", "split.n_last": "2"})
    a, b = fake_run("a", "ease", **same, **{"candidates.n": "50"}), fake_run("b", "itemknn", **same)
    check_members([a, b], 30)
    other = fake_run("c", "popularity", **{**same, "split.n_last": "1"})
    with pytest.raises(ConfigError, match=r"(?s)different data or splits.*n_last=2.*a \(ease\).*n_last=1.*c \(popularity\)"):
        check_members([a, b, other], 30)
    with pytest.raises(ConfigError, match="data_fingerprint=f2"):
        check_members([a, fake_run("d", "ease", **{**same, "data_fingerprint": "f2"})], 30)
    with pytest.raises(ConfigError, match="top_n.*run a .*saved only 50"):
        check_members([a, b], 60)
