"""A plain numpy/scipy EASE, the way one writes it without recmovie: the scale benchmark's yardstick.

    python benchmarks/reference_ease.py <competition folder> <submission.csv> [l2]
"""
import sys

import numpy as np
import pandas as pd
import scipy.sparse as sp


def main(folder: str, out: str, l2: float = 500.0) -> None:
    df = pd.read_csv(f"{folder}/train_ratings.csv")
    users, u = np.unique(df["user"].to_numpy(), return_inverse=True)
    items, i = np.unique(df["item"].to_numpy(), return_inverse=True)
    x = sp.csr_matrix((np.ones(len(df), np.float32), (u, i)), shape=(len(users), len(items)))
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    b = (p / -np.diag(p)).astype(np.float32)
    np.fill_diagonal(b, 0.0)
    rows = []
    for s in range(0, x.shape[0], 1000):
        chunk = x[s : s + 1000]
        scores = np.asarray(chunk @ b)
        r, c = chunk.nonzero()
        scores[r, c] = -np.inf
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        top = np.take_along_axis(top, order, 1)
        rows.append(pd.DataFrame({"user": np.repeat(users[s : s + len(top)], 10), "item": items[top].ravel()}))
    pd.concat(rows).to_csv(out, index=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(float(a) for a in sys.argv[3:]))
