"""What a model learns about the data's shape, and what its checkpoint carries to rebuild it alone.

Every model is built from a Schema (`Recommender.build(schema)`), never from the data itself, so
`predict.py` can rebuild any model from its checkpoint: the sizes of its embedding tables, the
vocabularies of the side fields it reads, the longest history a sequence model may see, and the
reserved item ids (padding, mask) that sequence models put beside the catalogue's own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Schema:
    n_users: int
    n_items: int
    # side field -> its values (a value's position is its code in the data; code len(vocab) is
    # reserved for "unknown / no value")
    side_vocab: dict[str, list[str]] = field(default_factory=dict)
    max_history: int = 0  # the longest training history, in items
    has_time: bool = False  # whether the interactions' timestamps order the histories

    # reserved item ids, after the catalogue's 0 .. n_items - 1
    @property
    def pad_item(self) -> int:
        return self.n_items

    @property
    def mask_item(self) -> int:
        return self.n_items + 1

    @property
    def n_item_tokens(self) -> int:
        """Rows of an item embedding table that holds the reserved ids too."""
        return self.n_items + 2

    def side_size(self, name: str) -> int:
        """Codes of a side field, the reserved "unknown" one included (0 when the data has none)."""
        vocab = self.side_vocab.get(name)
        return 0 if vocab is None else len(vocab) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain values only: a checkpoint is loaded with torch.load(weights_only=True)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        return cls(n_users=int(d["n_users"]), n_items=int(d["n_items"]),
                   side_vocab={k: list(v) for k, v in d.get("side_vocab", {}).items()},
                   max_history=int(d.get("max_history", 0)), has_time=bool(d.get("has_time", False)))

    @classmethod
    def from_data(cls, data) -> "Schema":
        """From a PreparedData: its training part's longest history, its side fields' vocabularies."""
        ds = data.dataset
        counts = np.bincount(data.train_user, minlength=data.n_users)
        return cls(
            n_users=data.n_users, n_items=data.n_items,
            # titles are free text (one per item), not a vocabulary a model embeds by code
            side_vocab={name: [str(v) for v in f.vocab] for name, f in sorted(ds.side.items()) if name != "title"},
            max_history=int(counts.max()) if len(counts) else 0,
            has_time=bool(len(ds.time) and ds.time.max() > ds.time.min()),
        )
