"""Weight search: the grid's vectors."""
from __future__ import annotations

from recmovie.ensemble.search import grid_vectors


def test_grid_keeps_one_vector_per_direction():
    vectors = {tuple(w) for w in grid_vectors([0, 1, 2], 2)}
    assert vectors == {(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (1.0, 2.0), (2.0, 1.0)}
