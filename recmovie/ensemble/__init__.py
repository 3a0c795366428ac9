"""Ensembles of tracked runs: `ensemble.py` fuses or re-ranks the members' saved candidates.

members.py  find, check and load the member runs and their candidate lists
pool.py     the candidate pool (every listed user-item pair, each member's rank and score), score
            normalisation, and ranked lists out of pooled values
fusion.py   rank vote, reciprocal-rank fusion, score blend, and the full-score blend
search.py   weight search (grid or Optuna) over any objective of a weight vector
rerank.py   the learned re-ranker (LightGBM LambdaRank) and its pair features
command.py  `run_ensemble`: load -> combine -> publish (what `python ensemble.py` runs)

Modules here import each other in that order, never back: a pool knows nothing of runs, the
search nothing of fusion.
"""
