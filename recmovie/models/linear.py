"""Linear item-item models (EASE and the SLIM family): scores = history @ B, B items x items."""
from __future__ import annotations

import numpy as np
import torch

from recmovie.data.batches import UserBatch
from recmovie.data.prepare import PreparedData
from recmovie.models.base import Recommender, check
from recmovie.models.ops import column_tiles, gram, history_times

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ItemItemModel(Recommender):
    """Holds a dense items x items matrix `B` and scores a history by `x @ B`."""

    def __init__(self, **params):
        super().__init__(**params)
        self.register_buffer("B", torch.zeros(0, 0))
        self._tiles: np.ndarray | None = None

    matrices = 2  # items x items matrices held at once in the model's own dtype (the Gram/inverse and B)

    def memory_needed(self, schema) -> tuple[int, str] | None:
        itemsize = 8 if self.params.get("dtype") == "float64" else 4
        # plus the ranking kernel's float32 column tiles of B
        need = schema.n_items ** 2 * (self.matrices * itemsize + 4)
        hint = "model.dtype=float32, " if itemsize == 8 else ""
        return need, f"{hint}fewer items (drop rare ones from the data), or a machine with more memory"

    def set_matrix(self, b: np.ndarray | torch.Tensor) -> None:
        # row-major: the ranking kernel's tiles are cut from rows, and a column-major B costs a copy there
        self.B = torch.as_tensor(b, dtype=torch.float32).contiguous()
        self._tiles = None

    def score(self, batch: UserBatch) -> torch.Tensor:
        if self.B.device.type != "cpu":  # GPU: the device's own sparse x dense product
            return batch.to(self.B.device).csr() @ self.B
        if self._tiles is None:
            self._tiles = column_tiles(self.B)
        return history_times(batch, self._tiles, self.B.shape[1])

    def _load_from_state_dict(self, *args, **kwargs):
        self._tiles = None
        super()._load_from_state_dict(*args, **kwargs)


def regularised_inverse(x, reg: float | np.ndarray, dtype: torch.dtype = torch.float32,
                        item_gram: np.ndarray | None = None) -> torch.Tensor:
    """P = (X^T X + diag(reg))^-1 for a sparse users x items matrix X; `reg` > 0, scalar or per item.
    `item_gram`: X^T X computed before (`shared_gram`), copied, not overwritten.

    With fewer users than items it goes through the users x users system (Woodbury), with
    D = diag(reg) and Xs = X D^-1/2:  P = D^-1/2 (I - Xs^T (I + Xs Xs^T)^-1 Xs) D^-1/2.
    """
    n_items = x.shape[1]
    reg = torch.as_tensor(np.broadcast_to(np.asarray(reg, dtype=np.float64), (n_items,)).copy()).to(dtype)
    if x.shape[0] < n_items:
        scale = reg.rsqrt()
        xs = torch.from_numpy(x.toarray()).to(dtype).mul_(scale)
        k = xs @ xs.T
        k.diagonal().add_(1.0)
        p = -(xs.T @ torch.cholesky_solve(xs, torch.linalg.cholesky(k)))
        del xs, k
        p.diagonal().add_(1.0)
        return p.mul_(scale[:, None]).mul_(scale[None, :])
    if item_gram is not None:
        g = torch.from_numpy(item_gram).to(dtype, copy=True)
    else:
        g = torch.from_numpy(gram(x)).to(dtype)  # float32: the Gram itself; float64: a copy, the float32 one freed
    g.diagonal().add_(reg)
    return inverse_in_place(g)


def inverse_in_place(a: torch.Tensor, block: int = 512) -> torch.Tensor:
    """The inverse of a symmetric positive definite row-major matrix, in its own memory: `a` is
    overwritten and returned, row-major and exactly symmetric.

    Block Gauss-Jordan sweeps (the sweep operator, Goodnight 1979), one `block` of pivots at a
    time, keeping only the upper triangle: sweeping pivots K maps A_KK -> -A_KK^-1, A_KR ->
    A_KK^-1 A_KR, A_RR -> A_RR - A_RK A_KK^-1 A_KR, and sweeping every pivot leaves -A^-1. The work
    is about n^3 flops of matrix products (as Cholesky + inverse), the memory one n x n matrix
    plus two block x n strips, where factor-then-invert out of place holds three. (LAPACK's potrf +
    potri also work in place, but scipy's OpenBLAS 0.3.30 crashes on a matrix past 2^31 bytes, and
    torch's cholesky_inverse through out= is several times slower: benchmarks/RESULTS.md#code-choices.)
    Pivot blocks are Schur complements of A, so they are positive definite when A is; a matrix
    that is not raises torch.linalg.LinAlgError.
    """
    from recmovie.models.ops import mirror_upper

    n = a.shape[0]
    if a.dim() != 2 or a.shape[1] != n or not a.is_contiguous():
        raise ValueError(f"needs a square row-major matrix, got shape {tuple(a.shape)}")
    starts = range(0, n, block)
    for k0 in starts:
        k1 = min(k0 + block, n)
        k = slice(k0, k1)
        # rows K in full, read from the upper triangle (what lies left of the diagonal block is stale)
        row = torch.cat([a[:k0, k].T, a[k, k0:]], dim=1)
        s = torch.cholesky_solve(torch.eye(k1 - k0, dtype=a.dtype), torch.linalg.cholesky(row[:, k]))
        rowc = s @ row  # A_KK^-1 A_K.
        for r0 in starts:  # upper triangle, block rows: A_rr' -= A_rK A_KK^-1 A_Kr'
            if r0 != k0:
                a[r0 : r0 + block, r0:].addmm_(row[:, r0 : r0 + block].T, rowc[:, r0:], alpha=-1.0)
        a[:k0, k] = rowc[:, :k0].T
        a[k, k0:] = rowc[:, k0:]
        a[k, k] = -s
    mirror_upper(a.neg_().numpy())
    return a


class RidgeInverse:
    """P = (X^T X + reg I)^-1, applied by `zero_diagonal_solve`. With far fewer users than items it
    is never formed: P Z = (Z - X^T (reg I + X X^T)^-1 X Z) / reg costs two users x items^2 products
    instead of one items^3 (the bundled MovieLens sample: 610 users, 9.7k items)."""

    def __init__(self, x, reg: float, dtype: torch.dtype = torch.float32):
        self.reg = reg
        self.p = None
        if 2 * x.shape[0] >= x.shape[1]:
            self.p = regularised_inverse(x, reg, dtype)
            self.diag = self.p.diagonal().clone()
            return
        self.x = torch.from_numpy(x.toarray()).to(dtype)
        k = self.x @ self.x.T
        k.diagonal().add_(reg)
        self.k_inv_x = torch.cholesky_solve(self.x, torch.linalg.cholesky(k))
        self.diag = (1.0 - (self.x * self.k_inv_x).sum(0)) / reg

    def zero_diagonal_solve(self, z: torch.Tensor) -> torch.Tensor:
        """B = I + P (Z - diagMat(g)), g chosen so that diag(B) = 0 (the EASE / SLIM constraint's
        multipliers): g_j = (1 + (P Z)_jj) / P_jj. Overwrites z."""
        if self.p is not None:
            g = (1.0 + (self.p * z.T).sum(1)) / self.diag  # (P Z)_jj = sum_i P_ji Z_ij
            z.diagonal().sub_(g)
            b = self.p @ z
        else:
            kz = self.k_inv_x @ z
            g = (1.0 + (z.diagonal() - (self.x * kz).sum(0)) / self.reg) / self.diag
            z.diagonal().sub_(g)
            kz.sub_(self.k_inv_x * g[None, :])
            b = z.sub_(self.x.T @ kz).div_(self.reg)
        b.diagonal().fill_(0.0)  # 1 + (P (Z - diagMat(g)))_jj, zero up to rounding
        return b

    def ease_weights(self) -> torch.Tensor:
        """zero_diagonal_solve(-reg I) without the product: EASE's -P / diag(P), zero diagonal."""
        if self.p is not None:
            b = self.p / -self.diag
        else:
            b = torch.eye(len(self.diag), dtype=self.diag.dtype).sub_(self.x.T @ self.k_inv_x).div_(-self.reg * self.diag)
        b.diagonal().fill_(0.0)
        return b


def shared_gram(data: PreparedData) -> dict:
    """`fit`'s shared work for a `tune` grid of the models that invert X^T X + a ridge: the Gram
    matrix, computed once for every point instead of once per point (a third of a point's fit at
    the competition's size). It is one more items x items matrix during the tune, which the memory
    check before the fit already counts (`ItemItemModel.matrices`: the Gram and B, held apart)."""
    x = data.train_matrix
    return {"item_gram": gram(x)} if x.shape[0] >= x.shape[1] else {}  # fewer users: Woodbury, no Gram


def item_sq_norms(x) -> np.ndarray:
    """diag(X^T X) of a sparse users x items matrix."""
    return np.bincount(x.indices, weights=np.asarray(x.data, np.float64) ** 2, minlength=x.shape[1])


class EASE(ItemItemModel):
    """Steck 2019, "Embarrassingly Shallow Autoencoders": B = I - P / diag(P), P = (X^T X + l2 I)^-1."""

    tune_on_popular_items = True

    def __init__(self, l2: float = 500.0, dtype: str = "float32"):
        super().__init__(l2=l2, dtype=dtype)
        check(l2 > 0, "l2", f"must be > 0, got {l2}")
        check(dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")

    def shared_work(self, data: PreparedData, varying: set[str]) -> dict:
        return shared_gram(data)

    def fit(self, data: PreparedData, item_gram: np.ndarray | None = None) -> None:
        p = regularised_inverse(data.train_matrix, float(self.params.l2), DTYPES[self.params.dtype], item_gram)
        b = p.div_(-p.diagonal().clone())  # in place: B_ij = -P_ij / P_jj, the inverse's own memory
        b.diagonal().zero_()
        self.set_matrix(b)


class EDLAE(ItemItemModel):
    """Steck 2020, "Autoencoders that don't overfit towards the Identity" (NeurIPS): the full-rank
    emphasized denoising linear autoencoder, with the relaxed diagonal of Moon, Kim & Lee 2023,
    "It's Enough: Relaxing Diagonal Constraints in Linear Autoencoders for Recommendation" (SIGIR):

        min_B ||X - XB||^2 + ||Lambda^1/2 B||^2  s.t. diag(B) <= xi,
        Lambda = l2 I + dropout / (1 - dropout) diagMat(diag(X^T X))

    Closed form: B = I - P (Lambda + diagMat(mu)), P = (X^T X + Lambda)^-1,
    mu = max(0, (1 - xi) / diag(P) - diag(Lambda)) (the constraint's KKT multipliers).
    Dropout of the input makes the ridge grow with an item's popularity, which keeps popular items
    from explaining themselves through their neighbours; both papers report it above EASE on ML-20M,
    Netflix and MSD. xi = 0 (the default) is EDLAE, dropout = 0 and xi = 0 is EASE; xi > 0 (RDLAE)
    rescales only the columns whose ridge dominates, as diag(B) itself only scores seen items.
    """

    tune_on_popular_items = True

    def __init__(self, l2: float = 300.0, dropout: float = 0.25, xi: float = 0.0, dtype: str = "float32"):
        super().__init__(l2=l2, dropout=dropout, xi=xi, dtype=dtype)
        check(l2 > 0, "l2", f"must be > 0, got {l2}")
        check(0 <= dropout < 1, "dropout", f"must be in [0, 1), got {dropout}")
        check(0 <= xi < 1, "xi", f"must be in [0, 1), got {xi}")
        check(dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")

    def shared_work(self, data: PreparedData, varying: set[str]) -> dict:
        return shared_gram(data)

    def fit(self, data: PreparedData, item_gram: np.ndarray | None = None) -> None:
        p = self.params
        x = data.train_matrix
        lam = p.l2 + p.dropout / (1.0 - p.dropout) * item_sq_norms(x)
        inv = regularised_inverse(x, lam, DTYPES[p.dtype], item_gram)
        lam = torch.as_tensor(lam).to(DTYPES[p.dtype])
        mu = ((1.0 - p.xi) / inv.diagonal() - lam).clamp_(min=0)
        b = inv.mul_(-(lam + mu)[None, :])
        b.diagonal().add_(1.0)
        self.set_matrix(b)


class ADMMSLIM(ItemItemModel):
    """Steck, Dimakopoulou, Riabov & Jebara 2020, "ADMM SLIM: Sparse Recommendations for Many Users":

        min ||X - XB||^2 + l2 ||B||^2 + 2 l1 |B|_1  s.t. diag(B) = 0 (and B >= 0 with nonneg)

    by ADMM on the split B = C: B takes the quadratic part and the zero diagonal (closed form with
    P = (X^T X + (l2 + rho) I)^-1, inverted once), C the L1 and non-negativity (soft-thresholding);
    U is the scaled dual. The returned weights are C: sparse, zero diagonal, non-negative if asked.
    Each iteration but the first (EASE with ridge l2 + rho, as C = U = 0) costs one items^3 product,
    about as much as EASE's whole fit at the competition's size; so by default 2 iterations: more
    ranked within noise of them on validation although the residuals are far from converged
    (benchmarks/RESULTS.md#code-choices). Non-negativity alone zeroes over half of the weights;
    l1 > 0 makes them sparser.
    """

    matrices = 5  # P, B, C, U and a product

    def __init__(self, l2: float = 200.0, l1: float = 0.0, rho: float = 1000.0, nonneg: bool = True,
                 iterations: int = 2, dtype: str = "float32"):
        super().__init__(l2=l2, l1=l1, rho=rho, nonneg=nonneg, iterations=iterations, dtype=dtype)
        check(l2 >= 0, "l2", f"must be >= 0, got {l2}")
        check(l1 >= 0, "l1", f"must be >= 0, got {l1}")
        check(rho > 0, "rho", f"must be > 0, got {rho}")
        check(isinstance(nonneg, bool), "nonneg", f"must be true or false, got {nonneg!r}")
        check(isinstance(iterations, int) and iterations >= 1, "iterations",
              f"must be an integer >= 1, got {iterations!r}")
        check(dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")

    def prox(self, v: torch.Tensor) -> torch.Tensor:
        """argmin_C 2 l1 |C|_1 + rho ||C - v||^2 (over C >= 0 with nonneg)."""
        t = self.params.l1 / self.params.rho
        if self.params.nonneg:
            return (v - t).clamp_(min=0)
        return v.sign() * (v.abs() - t).clamp_(min=0)

    def fit(self, data: PreparedData) -> None:
        p = self.params
        l2, rho, dtype = p.l2, p.rho, DTYPES[p.dtype]
        inv = RidgeInverse(data.train_matrix, l2 + rho, dtype)
        n = data.n_items
        c = torch.zeros(n, n, dtype=dtype)
        u = torch.zeros(n, n, dtype=dtype)
        self.fit_log = []
        for it in range(p.iterations):
            if it == 0:  # C = U = 0: the first B step is EASE with ridge l2 + rho, no product needed
                b = inv.ease_weights()
            else:
                # B~ = P (X^T X + rho (C - U)) = I + P (rho (C - U) - (l2 + rho) I), as P X^T X = I - (l2 + rho) P
                z = torch.sub(c, u).mul_(rho)
                z.diagonal().sub_(l2 + rho)
                b = inv.zero_diagonal_solve(z)
                del z
            u.add_(b)
            c_next = self.prox(u.clone())
            size = max(float(c_next.norm()), 1e-12)
            # relative: the constraint B = C's violation, and how far this step moved C
            primal, change = float(torch.dist(b, c_next)) / size, float(torch.dist(c, c_next)) / size
            c = c_next
            u.sub_(c)
            del b
            self.fit_log.append((it, {"admm_primal_residual": primal, "admm_change": change}))
        self.set_matrix(c)


class HybridEASE(ItemItemModel):
    """Item-item EASE blended with user-user EASE (the competition's winning "hybrid EASE"):

        scores(u) = alpha * x_u B  +  (1 - alpha) * (C X)_u,
        B = I - P / diag(P), P = (X^T X + l2 I)^-1        (items x items)
        C = I - Q / diag(Q), Q = (X X^T + user_l2 I)^-1   (users x users)

    The user-user side scores a training user through the users like them, so it holds per-user
    state: the dense users x items rows C X, kept in the checkpoint (predict.py ranks the same
    users only). Its cost is the users x users inverse: seconds on ml-100k, minutes and about
    4 GB at the competition's 31k users."""

    tune_on_popular_items = True

    per_user_state = True

    def memory_needed(self, schema) -> tuple[int, str] | None:
        need, hint = super().memory_needed(schema)
        itemsize = 8 if self.params.dtype == "float64" else 4
        # the users x users inverse and the dense users x items rows C X
        return need + schema.n_users ** 2 * itemsize + schema.n_users * schema.n_items * 4, hint

    def __init__(self, l2: float = 500.0, user_l2: float = 1000.0, alpha: float = 0.6, dtype: str = "float32"):
        super().__init__(l2=l2, user_l2=user_l2, alpha=alpha, dtype=dtype)
        check(l2 > 0, "l2", f"must be > 0, got {l2}")
        check(user_l2 > 0, "user_l2", f"must be > 0, got {user_l2}")
        check(0.0 <= alpha <= 1.0, "alpha", f"must be in [0, 1], got {alpha}")
        check(dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
        self.register_buffer("user_scores", torch.zeros(0, 0))

    def shared_work(self, data: PreparedData, varying: set[str]) -> dict:
        # alpha only weighs the two sides: a grid over it alone shares both whole
        return {"sides": self.sides(data)} if varying <= {"alpha"} else shared_gram(data)

    def fit(self, data: PreparedData, item_gram: np.ndarray | None = None,
            sides: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        alpha = self.params.alpha
        if sides is None:  # in place: no second copy of either side
            b, user_scores = self.sides(data, item_gram)
            self.set_matrix(b.mul_(alpha))
            self.user_scores = user_scores.mul_(1.0 - alpha)
        else:
            self.set_matrix(sides[0] * alpha)
            self.user_scores = sides[1] * (1.0 - alpha)

    def sides(self, data: PreparedData, item_gram: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The item-item weights B and the user-user scores C X, before alpha weighs them."""
        p, dtype = self.params, DTYPES[self.params.dtype]
        x = data.train_matrix
        inv = regularised_inverse(x, float(p.l2), dtype, item_gram)
        b = inv / (-inv.diagonal())
        b.diagonal().zero_()
        del inv
        q = regularised_inverse(x.T.tocsr(), float(p.user_l2), dtype)
        c = q / (-q.diagonal())
        c.diagonal().zero_()
        del q
        # C X as (X^T C^T)^T: a sparse x dense product
        xt = torch.sparse_csr_tensor(*(torch.from_numpy(a) for a in (x.T.tocsr().indptr.astype(np.int64),
                                       x.T.tocsr().indices.astype(np.int64), x.T.tocsr().data.astype(np.float32))),
                                     size=(x.shape[1], x.shape[0]))
        return b.to(torch.float32), (xt @ c.T.to(torch.float32)).T.contiguous()

    def score(self, batch: UserBatch) -> torch.Tensor:
        return super().score(batch) + self.user_scores[batch.users.to(self.user_scores.device)]
