"""Probe scores of frozen embeddings: grouped folds, k-NN vote against a brute-force reference."""

from __future__ import annotations

import numpy as np

from mmray.train.pretrain.probe import knn_predict, probe_scores


def test_separable_classes_score_high_and_noise_scores_near_chance():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 10)
    labels = groups % 2  # a slide's tiles share its label
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    x = centres[labels] + 0.2 * rng.normal(size=(200, 3))
    good = probe_scores(x, labels, groups)
    assert good["probe_linear_bacc"] > 0.95 and good["probe_knn_acc"] > 0.95
    noise = probe_scores(rng.normal(size=(200, 3)), labels, groups)
    assert noise["probe_linear_bacc"] < 0.7 and noise["probe_knn_acc"] < 0.7  # no better than chance
    assert probe_scores(x, np.zeros(200), groups) == {}  # one class: nothing to score


def test_knn_vote_matches_brute_force():
    rng = np.random.default_rng(1)
    tr, te = rng.normal(size=(30, 4)), rng.normal(size=(7, 4))
    y = rng.integers(0, 3, 30)
    got = knn_predict(tr, y, te, k=5, temperature=0.07, n_classes=3)
    a = tr / np.linalg.norm(tr, axis=1, keepdims=True)
    for i, q in enumerate(te / np.linalg.norm(te, axis=1, keepdims=True)):
        sim = a @ q
        top = np.argsort(-sim)[:5]
        votes = np.zeros(3)
        for j in top:
            votes[y[j]] += np.exp(sim[j] / 0.07)
        assert got[i] == votes.argmax()
