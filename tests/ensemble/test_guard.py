"""The guard by hand: held-out users, the pool's recall, and the verdict against the best member."""
from __future__ import annotations

import numpy as np

from recmovie.data.split import PART_GIVEN, PART_LAST, PART_RANDOM, Holdout
from recmovie.ensemble.guard import FOLDS_BELOW, held_out_folds, held_out_users, judge, pool_recall, verdict_metrics
from recmovie.ensemble.pool import build_pool
from tests.ensemble.helpers import lists, tiny_data


def test_held_out_users_are_a_seeded_share_of_the_distinct_users():
    users = np.repeat(np.arange(50), 3)
    held = held_out_users(users, 0.2, 7)
    assert len(held) == 10 and set(held) <= set(range(50)) and np.array_equal(held, held_out_users(users, 0.2, 7))
    assert not np.array_equal(held, held_out_users(users, 0.2, 8))


def data_with_truth():
    data = tiny_data({u: [7] for u in range(4)}, n_items=8)
    # each user's hidden item: member 0 lists it first for users 0-2, member 1 only for user 3
    data.holdout = Holdout(np.arange(4, dtype=np.int32), np.array([0, 1, 2, 3], np.int32), np.zeros(4, np.int8))
    a = {0: [0, 4], 1: [1, 4], 2: [2, 4], 3: [5, 4]}
    b = {0: [4, 5], 1: [4, 5], 2: [4, 5], 3: [3, 4]}
    return data, build_pool(lists(a, b), 8, 2)


def test_folds_hold_out_every_user_once_and_auto_folds_only_small_validation_parts():
    users = np.repeat(np.arange(60), 3)
    folds = held_out_folds(users, 4, 0.2, 1)
    assert len(folds) == 4 and sorted(np.concatenate(folds).tolist()) == list(range(60))
    assert [len(f) for f in folds] == [15] * 4
    assert np.array_equal(held_out_folds(users, 1, 0.2, 1)[0], held_out_users(users, 0.2, 1))
    assert len(held_out_folds(users, "auto", 0.2, 1)) == 5  # few validation users
    assert len(held_out_folds(np.arange(FOLDS_BELOW), "auto", 0.2, 1)) == 1


def test_pool_recall_is_the_share_of_hidden_items_any_member_listed():
    data, pool = data_with_truth()
    assert pool_recall(pool, data) == 1.0
    data.holdout = Holdout(np.array([0, 0], np.int32), np.array([0, 6], np.int32), np.zeros(2, np.int8))
    assert pool_recall(pool, data) == 0.5


def test_the_verdict_compares_the_combination_with_the_best_member_per_user():
    data, pool = data_with_truth()
    users = np.arange(4)
    same = judge(pool, -pool.ranks[:, 0], data, users, k=1)  # member 0's own order: no gain over it
    assert same.best == 0 and same.members == [0.75, 0.25] and same.combined == 0.75
    assert same.margin == 0.0 and not same.passed
    # an order that takes each user's hidden item: better by more than the standard error
    hit = np.isin(pool.users * 8 + pool.items, [0 * 8 + 0, 1 * 8 + 1, 2 * 8 + 2, 3 * 8 + 3]).astype(float)
    better = judge(pool, hit, data, users, k=1)
    assert better.combined == 1.0 and better.margin == 0.25 and better.passed is False  # one user of four: se 0.25
    assert "not better than the best member" in better.line("rrf", 1)
    assert "best member's (ease 0123abcd) 0.7500" in better.line("rrf", 1, ["ease 0123abcd", "als 4567ef01"])


def test_the_verdict_gives_each_hidden_part_for_the_combination_and_every_member():
    data, pool = data_with_truth()
    # users 0-3 each hide item u as their last part; users 0 and 1 also item 4 as a random one
    data.holdout = Holdout(np.array([0, 1, 2, 3, 0, 1], np.int32), np.array([0, 1, 2, 3, 4, 4], np.int32),
                           np.array([PART_LAST] * 4 + [PART_RANDOM] * 2, np.int8))
    v = judge(pool, -pool.ranks[:, 0], data, np.arange(4), k=1)  # member 0's order: items 0, 1, 2, 5
    assert v.parts == {"last": (0.75, [0.75, 0.25]), "random": (0.0, [0.0, 1.0])}  # member 1's: 4, 4, 4, 3
    assert v.parts_line(["a", "b"]) == ("parts on the same users: last 0.7500 (best member there: a 0.7500), "
                                        "random 0.0000 (best member there: b 1.0000)")
    m = verdict_metrics(v, 1)
    assert m["val_held_recall_at_1_last"] == 0.75 and m["val_held_recall_at_1_random_member1"] == 1.0
    data.holdout.part[:] = PART_GIVEN  # a given holdout has no parts
    given = judge(pool, -pool.ranks[:, 0], data, np.arange(4), k=1)
    assert given.parts == {} and given.parts_line(["a", "b"]) is None
    assert not any(key.endswith(("_last", "_random")) for key in verdict_metrics(given, 1))
