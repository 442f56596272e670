"""How well frozen embeddings separate known labels: a linear probe and a k-nearest-neighbour vote.

Both are cross-validated over *groups* (slides or patients): every view of one
slide is on the same side of a split, so a probe cannot score by recognising
the slide.  Scores:

* ``probe_linear_bacc``: balanced accuracy of an L2-regularised logistic
  regression (scikit-learn) on the embeddings centred on the training fold's
  mean and L2-normalised, pooled over the out-of-fold predictions.  The
  features are not standardised dimension by dimension: that would let a probe
  read any faint direction of a random network's output, where the question is
  whether the embedding's geometry separates the classes;
* ``probe_knn_acc``: accuracy of DINO's weighted k-NN classifier (cosine
  similarity, the ``k`` nearest training embeddings vote with weight
  ``exp(sim / T)``, T = 0.07), also out of fold.

Generic: ``features`` are any ``[N, D]`` embeddings (tiles, regions, CT crops).
"""

from __future__ import annotations

import numpy as np


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, k: int = 20,
                temperature: float = 0.07, n_classes: int | None = None) -> np.ndarray:
    """Class index per test row by DINO's weighted k-NN vote (cosine similarity)."""
    n_classes = n_classes or int(max(train_y.max(), 0)) + 1
    a = train_x / np.maximum(np.linalg.norm(train_x, axis=1, keepdims=True), 1e-12)
    b = test_x / np.maximum(np.linalg.norm(test_x, axis=1, keepdims=True), 1e-12)
    sim = b @ a.T
    k = max(1, min(k, len(a)))
    idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(sim, idx, axis=1)
    weights = np.exp(top / temperature - (top / temperature).max(axis=1, keepdims=True))
    votes = np.zeros((len(b), n_classes))
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), train_y[idx].ravel()), weights.ravel())
    return votes.argmax(axis=1)


def probe_scores(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, n_splits: int = 4,
                 k: int = 20, seed: int = 0) -> dict[str, float]:
    """``{"probe_linear_bacc", "probe_knn_acc"}`` out of fold over ``groups`` (module doc); classes with
    fewer than two groups are left out; {} when fewer than two classes remain."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    groups = np.asarray(groups)
    # a class seen in one group only cannot be scored across groups: its rows leave the probe
    per_class = {c: len(np.unique(groups[y == c])) for c in np.unique(y)}
    keep = np.isin(y, [c for c, n in per_class.items() if n >= 2])
    x, y, groups = x[keep], y[keep], groups[keep]
    classes, y = np.unique(y, return_inverse=True)
    n_groups = len(np.unique(groups))
    if len(classes) < 2 or n_groups < 2:
        return {}
    splits = min(n_splits, n_groups)
    lin = np.full(len(y), -1)
    knn = np.full(len(y), -1)
    for tr, te in GroupKFold(n_splits=splits).split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            continue
        mean = x[tr].mean(axis=0)

        def unit(a, mean=mean):
            a = a - mean
            return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        clf.fit(unit(x[tr]), y[tr])
        lin[te] = clf.predict(unit(x[te]))
        knn[te] = knn_predict(x[tr], y[tr], x[te], k=k, n_classes=len(classes))
    done = lin >= 0
    if not done.any():
        return {}
    return {"probe_linear_bacc": float(balanced_accuracy_score(y[done], lin[done])),
            "probe_knn_acc": float(np.mean(knn[done] == y[done]))}
