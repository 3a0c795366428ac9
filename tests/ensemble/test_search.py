"""Weight search: the grid's vectors, and one search per fold of the validation users."""
from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf

from recmovie.ensemble.search import grid_vectors, search_folds


def test_grid_keeps_one_vector_per_direction():
    vectors = {tuple(w) for w in grid_vectors([0, 1, 2], 2)}
    assert vectors == {(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (2.0, 1.0)}


def test_each_fold_searches_without_its_held_out_users_and_the_weights_are_averaged():
    users = np.arange(10)
    held = [np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7, 8, 9])]
    seen = []

    def objective_on(learning):
        seen.append(learning.tolist())
        best_first = float(learning.mean() < 5)  # learning on users 0-4 favours member 0, on 5-9 member 1
        return lambda w: -abs(w[0] / w.sum() - best_first)

    search = OmegaConf.create({"method": "grid", "grid": [0, 1]})
    found = search_folds(objective_on, users, held, 2, search)
    assert seen == [[5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]
    assert [w.tolist() for w in found.fold_weights] == [[0.0, 1.0], [1.0, 0.0]]
    assert found.weights.tolist() == [1.0, 1.0] and found.best == 0.0 and found.trials == 3
