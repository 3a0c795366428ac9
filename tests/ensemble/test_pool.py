"""The candidate pool and ranked lists: unlisted ranks, ties, users filled by popularity."""
from __future__ import annotations

import numpy as np

from recmovie.ensemble.fusion import fuse
from recmovie.ensemble.pool import build_pool, ranked_lists
from tests.ensemble.helpers import lists, order, tiny_data


def test_an_unlisted_item_counts_as_rank_top_n_plus_one():
    data = tiny_data({0: [0], 1: [0]})
    members = lists({0: [1, 2, 3], 1: [5, 6, 7]}, {0: [4, 1, 2]})
    # user 0: item4 = 4 (unlisted by the first) + 1 = 5 ties item2 = 2 + 3; the first member breaks it.
    # Ignoring unlisted items instead would put item4 (1) first.
    # user 1 is not ranked by the second member: its votes are all top_n + 1, the first member decides
    assert order(data, members) == [[1, 2, 4, 3], [5, 6, 7]]


def test_full_ties_fall_back_to_the_item_id():
    data = tiny_data({0: [0]})
    members = lists({0: [2, 1]}, {0: [4, 3]}, {0: [3, 4]}, {0: [1, 2]})
    # every item sums to 9 (unlisted = 3): 1: 2+3+3+1, 2: 1+3+3+2, 3: 3+2+1+3, 4: 3+1+2+3;
    # the first member's rank orders 2 before 1; it lists neither 3 nor 4: then the item id
    assert order(data, members, top_n=2) == [[2, 1, 3, 4]]


def test_users_short_of_k_items_are_filled_by_popularity():
    # items 5 and 6 are the most popular (seen by users 1-3); user 0 has seen item 6
    data = tiny_data({0: [6], 1: [5, 6], 2: [5, 6], 3: [5, 6, 2]})
    pool = build_pool(lists({0: [1], 1: [0, 1, 2]}), data.n_items, 3)
    topk, filled = ranked_lists(pool, fuse(pool, "rank_vote", np.ones(1)), data, depth=3, k=3)
    assert filled == 3  # user 0 had one item, users 2 and 3 none
    assert topk.items[0].tolist() == [1, 5, 2]  # then item 5 (3 users), item 2 (1 user); 6 is seen
    assert topk.items[3].tolist() == [0, 1, 3]  # popularity ties: the lowest item ids
    assert np.isfinite(topk.scores).all() and (np.diff(topk.scores, axis=1) < 0).all()
