"""Neighbourhood models: item-based and user-based k-nearest neighbours.

Both compare vectors by cosine similarity with shrinkage, sim(a, b) = a.b / (|a| |b| + shrink),
after an optional weighting of the vectors' entries (`weighting`):
  none:  the confidence weights as they are
  tfidf: w * idf(column)
  bm25:  w (k1 + 1) / (w + k1 (1 - b + b len / mean len)) * idf(column), len = the row's sum of w
with idf(column) = log(1 + (N - df + 0.5) / (df + 0.5)) over the N rows (BM25's idf, always > 0).
For item kNN the rows are items over users (active users count less); for user kNN the rows are
users over items (popular items count less).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from numba import njit, prange

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.models.base import Recommender, check
from recmovie.models.ops import sparse_rows_times

WEIGHTINGS = ("none", "tfidf", "bm25")


def check_neighbours(k, shrink, weighting, k1, b) -> None:
    check(isinstance(k, int) and k >= 1, "k", f"must be an integer >= 1, got {k!r}")
    check(shrink >= 0, "shrink", f"must be >= 0, got {shrink}")
    check(weighting in WEIGHTINGS, "weighting", f"must be one of {list(WEIGHTINGS)}, got {weighting!r}")
    check(k1 > 0, "k1", f"must be > 0, got {k1}")
    check(0 <= b <= 1, "b", f"must be in [0, 1], got {b}")


def column_idf(x: sp.csr_matrix) -> np.ndarray:
    n = x.shape[0]
    df = np.bincount(x.indices, minlength=x.shape[1]).astype(np.float64)
    return np.log1p((n - df + 0.5) / (df + 0.5))


def weigh_rows(x: sp.csr_matrix, weighting: str, idf: np.ndarray, mean_len: float, k1: float, b: float) -> sp.csr_matrix:
    """The rows of `x` weighted as the module describes; `idf` and `mean_len` come from the
    training rows, so that rows seen later (a user's history at scoring time) get the same scale."""
    if weighting == "none":
        return x
    x = sp.csr_matrix(x, dtype=np.float32, copy=True)
    tf = x.data.astype(np.float64)
    if weighting == "bm25":
        lengths = np.asarray(x.sum(axis=1)).ravel()
        norm = np.repeat(1.0 - b + b * lengths / max(mean_len, 1e-12), np.diff(x.indptr))
        tf = tf * (k1 + 1.0) / (tf + k1 * norm)
    x.data = (tf * idf[x.indices]).astype(np.float32)
    return x


def mean_row_length(x: sp.csr_matrix) -> float:
    return float(x.sum() / max(x.shape[0], 1))


def row_norms(x: sp.csr_matrix) -> np.ndarray:
    return np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()).astype(np.float32)


# target items whose similarity column is computed at once: a [n_items, block] float32 array
# (164 MB at 20k items), never the n_items^2 similarity matrix
SIMILARITY_BLOCK = 2048


class ItemKNN(Recommender):
    """Cosine item-item similarity with shrinkage, each item's `k` nearest neighbours kept:
    score(u, j) = sum over the user's items i among j's neighbours of w_ui * sim(i, j).

    The neighbours are a sparse matrix (n_items x k entries, rows = neighbour i, columns = target
    j), built one block of target columns at a time, and a history is scored by a sparse x sparse
    product into a dense row per user (ops.sparse_rows_times)."""

    def __init__(self, k: int = 200, shrink: float = 10.0, weighting: str = "bm25", k1: float = 1.2, b: float = 0.75):
        super().__init__(k=k, shrink=shrink, weighting=weighting, k1=k1, b=b)
        check_neighbours(k, shrink, weighting, k1, b)
        for name in ("nb_indptr", "nb_indices"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.int64))
        self.register_buffer("nb_values", torch.zeros(0))

    def fit(self, data: PreparedData) -> None:
        p = self.params
        items = data.train_matrix.T.tocsr()  # items as rows over users
        items = weigh_rows(items, p.weighting, column_idf(items), mean_row_length(items), p.k1, p.b)
        items = sp.csr_matrix(items, dtype=np.float32)
        norms = torch.from_numpy(row_norms(items))
        users = items.T.tocsr()  # users x items
        n, k = items.shape[0], min(p.k, items.shape[0])
        rows, cols, vals = [], [], []
        for start in range(0, n, SIMILARITY_BLOCK):
            stop = min(start + SIMILARITY_BLOCK, n)
            # rows start..stop of the Gram X^T X (symmetric: the columns of these targets)
            g = torch.from_numpy(sparse_rows_times(items, users, start, stop))
            sim = g.div_(norms[None, :] * norms[start:stop, None] + p.shrink + 1e-12)
            sim[torch.arange(stop - start), torch.arange(start, stop)] = 0.0
            top = torch.topk(sim, k, dim=1)  # neighbours of each target item j: row j - start
            keep = top.values > 0
            rows.append(top.indices[keep].numpy())
            cols.append((torch.arange(start, stop)[:, None].expand(-1, k))[keep].numpy())
            vals.append(top.values[keep].numpy())
        nb = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        self.set_neighbours(nb)

    def set_neighbours(self, nb: sp.csr_matrix) -> None:
        nb.sort_indices()
        self.nb_indptr = torch.from_numpy(nb.indptr.astype(np.int64))
        self.nb_indices = torch.from_numpy(nb.indices.astype(np.int64))
        self.nb_values = torch.from_numpy(nb.data.astype(np.float32))

    def neighbours(self) -> sp.csr_matrix:
        """The kept similarities, sim(i, j) at row i (neighbour), column j (target)."""
        n = len(self.nb_indptr) - 1
        return sp.csr_matrix((self.nb_values.numpy(), self.nb_indices.numpy(), self.nb_indptr.numpy()), shape=(n, n))

    def score(self, batch: UserBatch) -> torch.Tensor:
        b = batch.to("cpu")
        history = sp.csr_matrix((b.values.numpy(), b.indices.numpy(), b.indptr.numpy()), shape=(len(b), self.n_items))
        return torch.from_numpy(sparse_rows_times(history, self.neighbours())).to(self.nb_values.device)


@njit(cache=True)
def _kth_largest(values, k):  # pragma: no cover - numba
    # quickselect (Hoare partition, descending) on a scratch array; np.partition costs ~10 s to compile
    target, lo, hi = k - 1, 0, len(values) - 1
    while lo < hi:
        pivot = values[(lo + hi) // 2]
        i, j = lo, hi
        while i <= j:
            while values[i] > pivot:
                i += 1
            while values[j] < pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if target <= j:
            hi = j
        elif target >= i:
            lo = i
        else:
            break
    return values[target]


@njit(parallel=True, cache=True)
def _user_neighbour_scores(q_indptr, q_indices, q_data, q_norm, self_id, inv_indptr, inv_users, inv_data,
                           norms, x_indptr, x_indices, x_data, k, shrink, out):  # pragma: no cover - numba
    n_users = norms.shape[0]
    for r in prange(len(q_indptr) - 1):
        sim = np.zeros(n_users, np.float32)
        for p in range(q_indptr[r], q_indptr[r + 1]):
            wq = q_data[p]
            i = q_indices[p]
            for t in range(inv_indptr[i], inv_indptr[i + 1]):
                sim[inv_users[t]] += wq * inv_data[t]
        if self_id[r] >= 0:
            sim[self_id[r]] = 0.0
        positive = np.empty(n_users, np.float32)
        n_positive = 0
        for v in range(n_users):
            if sim[v] > 0:
                sim[v] /= q_norm[r] * norms[v] + shrink + 1e-12
                positive[n_positive] = sim[v]
                n_positive += 1
        if n_positive == 0:
            continue
        kk = min(k, n_positive)
        threshold = _kth_largest(positive[:n_positive], kk)
        # the k most similar users; ties at the threshold go to the lowest user ids
        taken = 0
        for v in range(n_users):
            if sim[v] > threshold:
                taken += 1
        for v in range(n_users):
            s = sim[v]
            if s < threshold or s <= 0:
                continue
            if s == threshold:
                if taken >= kk:
                    continue
                taken += 1
            for q in range(x_indptr[v], x_indptr[v + 1]):
                out[r, x_indices[q]] += s * x_data[q]


class UserKNN(Recommender):
    """Cosine user-user similarity with shrinkage: score(u, j) = sum over u's `k` most similar
    training users v of sim(u, v) * w_vj. Neighbours are found from the history being scored, so
    any user can be ranked (a training user is never its own neighbour)."""

    def __init__(self, k: int = 80, shrink: float = 10.0, weighting: str = "bm25", k1: float = 1.2, b: float = 0.75):
        super().__init__(k=k, shrink=shrink, weighting=weighting, k1=k1, b=b)
        check_neighbours(k, shrink, weighting, k1, b)
        for name in ("x_indptr", "x_indices"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.int64))
        for name in ("x_data", "w_data", "idf", "mean_len"):
            self.register_buffer(name, torch.zeros(0))
        self._index = None

    def fit(self, data: PreparedData) -> None:
        x = data.train_matrix.astype(np.float32)
        p = self.params
        idf, mean_len = column_idf(x), mean_row_length(x)
        w = weigh_rows(x, p.weighting, idf, mean_len, p.k1, p.b)
        self.x_indptr = torch.from_numpy(x.indptr.astype(np.int64))
        self.x_indices = torch.from_numpy(x.indices.astype(np.int64))
        self.x_data = torch.from_numpy(x.data.astype(np.float32))
        self.w_data = torch.from_numpy(w.data.astype(np.float32))
        self.idf = torch.from_numpy(idf.astype(np.float32))
        self.mean_len = torch.tensor([mean_len], dtype=torch.float32)
        self._index = None

    def _load_from_state_dict(self, *args, **kwargs):
        self._index = None
        super()._load_from_state_dict(*args, **kwargs)

    def _inverted_index(self):
        """Training users' weighted vectors by item (CSC) and their norms, built once."""
        if self._index is None:
            n_users = len(self.x_indptr) - 1
            w = sp.csr_matrix((self.w_data.numpy(), self.x_indices.numpy(), self.x_indptr.numpy()),
                              shape=(n_users, self.n_items))
            csc = w.tocsc()
            self._index = (csc.indptr.astype(np.int64), csc.indices.astype(np.int64), csc.data, row_norms(w))
        return self._index

    def score(self, batch: UserBatch) -> torch.Tensor:
        p = self.params
        inv_indptr, inv_users, inv_data, norms = self._inverted_index()
        q = sp.csr_matrix((batch.values.numpy(), batch.indices.numpy(), batch.indptr.numpy()),
                          shape=(len(batch), self.n_items))
        q = weigh_rows(q, p.weighting, self.idf.numpy().astype(np.float64), float(self.mean_len), p.k1, p.b)
        q_norm = row_norms(q)
        users = batch.users.numpy()
        self_id = np.where(users < len(norms), users, -1).astype(np.int64)
        out = np.zeros((len(batch), self.n_items), np.float32)
        _user_neighbour_scores(q.indptr.astype(np.int64), q.indices.astype(np.int64), q.data.astype(np.float32),
                               q_norm, self_id, inv_indptr, inv_users, inv_data, norms, self.x_indptr.numpy(),
                               self.x_indices.numpy(), self.x_data.numpy(), p.k, np.float32(p.shrink), out)
        return torch.from_numpy(out)
