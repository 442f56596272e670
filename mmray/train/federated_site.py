"""One institution's side of federated training: its rows stay here; only aggregates and weights leave.

:class:`SiteData` reads the site's own store (labels, the feature groups of
the model's modalities, its own saved folds, made and saved there when
missing), and answers the coordinator:

* preprocessing statistics (:mod:`mmray.train.federated_stats`: schema,
  column moments, counts below thresholds, score-test parts, time moments);
* ``train_round``: local epochs from the global weights, with the FedProx
  proximal term ``mu / 2 * ||w - w_global||^2`` in the loss; returns the new
  ``state_dict``, the number of training rows and the mean loss;
* ``evaluate``: Harrell's C of a split (inner validation or test fold) and
  its concordant / discordant / tied pair counts, so the coordinator pools
  the C-index over sites without a single risk score leaving;
* ``check_model``: the largest difference between a served model's risks
  from its feature columns and the training code's (one number);
* ``lineage``: store, feature-group and folds versions, counts.

Every answer passes :func:`mmray.train.federated_wire.check_outbound`
before it is returned.  :func:`site_actor` wraps the class as a Ray actor
that asks for the site's custom resource ``site_<name>``.  Which fold:
``fold`` 0..k-1 is that CV fold (its test fold held out), ``-1`` every row
(the final model).  Each call names its fold and carries what it needs, so
a restarted actor answers the next call from its store alone.
"""

from __future__ import annotations

import functools
import logging
import random
import time

import numpy as np
import torch

from mmray.errors import MmrayError
from mmray.train import data as D
from mmray.train import federated_stats as S
from mmray.train.dist import global_loss
from mmray.train.federated_wire import check_outbound
from mmray.train.preprocess import ModalityLayout

log = logging.getLogger("mmray.federated")
FINAL = -1


def with_columns(rows, pre):
    """``rows`` plus every column the fitted preprocessing reads that this site lacks (all missing)."""
    need = [c for b in pre.blocks_.values() for c in b.columns if c not in rows.columns]
    return rows.reindex(columns=list(rows.columns) + list(dict.fromkeys(need))) if need else rows


class SiteUnavailable(MmrayError):
    """The site drops out of this round (planned or random failure drill)."""


def _answer(method):
    """Check what ``method`` returns against the egress rules before it leaves the site."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        out = method(self, *args, **kwargs)
        check_outbound(out, forbidden=self._identifiers, path=f"site {self.name}: {method.__name__}")
        return out
    return wrapper


class SiteData:
    """A site's rows, folds and local training (module doc); plain Python, wrapped by :func:`site_actor`."""

    def __init__(self, name: str, *, store: str, modalities, task: str, labels_group: str = "labels",
                 n_folds: int = 5, folds_seed: int = 0, val_fraction: float = 0.2, seed: int = 0,
                 drop_rounds=(), drop_prob: float = 0.0):
        from mmray.store import FeatureStore, training_table
        from mmray.train.cv import task_rows
        from mmray.train.folds import FOLDS_GROUP, load_or_make_folds

        torch.set_num_threads(1)
        self.name, self.task, self.modalities = name, task, tuple(modalities)
        self.layout = ModalityLayout()
        self.seed, self.val_fraction = seed, val_fraction
        self.drop_rounds, self.drop_prob = {int(r) for r in drop_rounds}, float(drop_prob)
        self.store = FeatureStore(store)
        if self.store.latest(labels_group) is None:
            raise MmrayError(f"site {name}: no {labels_group!r} group in its store {store}; run `mmray ingest` "
                             f"there first")
        labels = self.store.read_table(labels_group)
        labels = labels[labels["time_days"].notna() & (labels["time_days"] > 0) & labels["event"].notna()]
        self.folds, folds_version = load_or_make_folds(self.store, labels, n_folds, folds_seed,
                                                       labels_group=labels_group)
        have = set(self.store.groups())
        groups = sorted({g for m in self.modalities for g in self.layout.groups.get(m, ()) if g in have})
        missing = [m for m in self.modalities if not any(g in have for g in self.layout.groups.get(m, ()))]
        if missing:
            log.warning("site %s: no data for modalities %s (its patients count as missing them)", name, missing)
        table = training_table(self.store, labels, groups=groups)
        self.versions = {labels_group: self.store.latest(labels_group), **table.attrs.get("feature_versions", {})}
        self.folds_ref = f"{FOLDS_GROUP}@{folds_version}"
        self.table = task_rows(table, task)
        self._identifiers = set(self.table["patient_id"].astype(str))
        for c in self.table.columns:
            if str(c).endswith("__bag_ids"):
                self._identifiers |= {str(s) for v in self.table[c].dropna() for s in v}
        self._rows: dict[int, dict] = {}
        self._setups: dict[str, dict] = {}
        self._encoding: dict = {}

    # ------------------------------------------------------------ rows
    def _split(self, fold: int) -> dict:
        if fold not in self._rows:
            from mmray.train.folds import inner_split, split

            t = self.table
            if fold == FINAL:
                train, test = t, t.iloc[:0]
            else:
                tr, te = split(t, self.folds, fold=fold)
                train, test = t.iloc[tr], t.iloc[te]
            fi, vi = inner_split(train, val_fraction=self.val_fraction, seed=self.seed + 7 * max(fold, 0))
            self._rows[fold] = {"fit": train.iloc[fi], "val": train.iloc[vi], "test": test}
        return self._rows[fold]

    def _present(self, frame, modality):
        return self.layout.present(frame, modality)

    # ------------------------------------------------------------ preprocessing statistics
    @_answer
    def prep_schema(self, *, fold: int, modalities) -> dict:
        fit = self._split(fold)["fit"]
        return {"modalities": S.site_schema(fit, self.layout, modalities), "table_columns": list(map(str, fit.columns))}

    def _encoded(self, fold: int, modality: str, block, impute=None):
        """This site's encoded fit rows of ``modality`` (cached per fold and encoding) and those rows."""
        key = (fold, modality, repr((block.columns, block.levels_, block.dropped_)))
        if key not in self._encoding:
            if len(self._encoding) > 16:
                self._encoding.clear()
            fit = self._split(fold)["fit"]
            rows = self._present(fit, modality)
            self._encoding[key] = (S.site_encode(fit, block, rows), fit.loc[rows])
        X, rows = self._encoding[key]
        if impute is not None:
            X = np.where(np.isnan(X), np.asarray(impute)[None, :], X)
        return X, rows

    @_answer
    def prep_moments(self, *, fold: int, blocks: dict, impute: dict | None) -> dict:
        return {m: S.site_moments(self._encoded(fold, m, b, (impute or {}).get(m))[0]) for m, b in blocks.items()}

    @_answer
    def prep_counts(self, *, fold: int, blocks: dict, thresholds, columns) -> np.ndarray:
        """Counts below thresholds; ``columns`` index the modalities' encoded columns one after the other."""
        columns = np.asarray(columns, dtype=np.int64)
        out = np.zeros(thresholds.shape, dtype=np.int64)
        start = 0
        for m, b in blocks.items():
            X = self._encoded(fold, m, b)[0]
            mine = (columns >= start) & (columns < start + X.shape[1])
            if mine.any():
                out[mine] = S.site_counts_le(X, thresholds[mine], columns[mine] - start)
            start += X.shape[1]
        return out

    @_answer
    def prep_cox(self, *, fold: int, blocks: dict, support: dict, mean: dict, scale: dict) -> dict:
        out = {}
        for m, b in blocks.items():
            X, rows = self._encoded(fold, m, b, b.imputer_.statistics_)
            out[m] = S.site_cox_parts(X[:, support[m]], rows["time_days"].to_numpy(float),
                                      rows["event"].astype(bool).to_numpy(), mean=mean[m], scale=scale[m])
        return out

    def _times(self, fold: int) -> np.ndarray:
        """``[n, 2]``: event times (NaN for censored rows) and every follow-up time of the fit rows."""
        fit = self._split(fold)["fit"]
        t = fit["time_days"].to_numpy(float)
        return np.column_stack([np.where(fit["event"].astype(bool).to_numpy(), t, np.nan), t])

    @_answer
    def time_moments(self, *, fold: int) -> dict:
        return S.site_moments(self._times(fold))

    @_answer
    def time_counts(self, *, fold: int, thresholds, columns) -> np.ndarray:
        return S.site_counts_le(self._times(fold), thresholds, columns)

    # ------------------------------------------------------------ model
    def _setup(self, fold: int, key: str, setup: dict) -> dict:
        """Transformed splits, model and optimiser for one (fold, preprocessing, spec); cached by ``key``."""
        if key not in self._setups:
            self._setups.clear()
            pre, spec = setup["pre"], setup["spec"]
            cols = {}
            for split, rows in self._split(fold).items():
                if len(rows):
                    cols[split] = D.prepared_columns(pre.transform(with_columns(rows, pre)))
            model = spec.build()
            opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
            from mmray.models.losses import TimeBins

            bins = TimeBins(**spec.bins) if spec.bins else None
            self._setups[key] = {"spec": spec, "cols": cols, "model": model, "opt": opt, "bins": bins,
                                 "kw": {"batch_size": spec.batch_size, "modalities": model.modalities,
                                        "dims": spec.modality_dims, "bag_dim": None}}
        return self._setups[key]

    def _drops(self, rnd: int) -> bool:
        if rnd in self.drop_rounds:
            return True
        if self.drop_prob > 0:
            rng = np.random.default_rng([self.seed, rnd, sum(map(ord, self.name))])
            return bool(rng.random() < self.drop_prob)
        return False

    @_answer
    def train_round(self, *, fold: int, rnd: int, key: str, setup: dict, state: dict, local_epochs: int,
                    mu: float = 0.0) -> dict:
        """Local epochs from the global ``state`` (module doc); FedProx when ``mu > 0``."""
        if self._drops(rnd):
            raise SiteUnavailable(f"site {self.name} drops out of round {rnd} (failure drill)")
        t0 = time.perf_counter()
        s = self._setup(fold, key, setup)
        model, opt, spec = s["model"], s["opt"], s["spec"]
        model.load_state_dict(state)
        anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else None
        seed = (spec.seed * 1_000_003 + rnd * 7919 + sum(map(ord, self.name))) % 2**31
        torch.manual_seed(seed)
        random.seed(seed)
        total, n = 0.0, 0
        model.train()
        for epoch in range(local_epochs):
            for batch, w in D.batches(s["cols"]["fit"], shuffle_seed=seed + epoch, **s["kw"]):
                opt.zero_grad(set_to_none=True)
                loss, value = global_loss(spec.task, model(batch), batch, w, ties=spec.ties, bins=s["bins"])
                if anchor is not None:
                    loss = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                if not torch.isfinite(loss):
                    raise MmrayError(f"site {self.name}: training loss became {float(loss)} in round {rnd}; "
                                     f"lower lr")
                loss.backward()
                if spec.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                opt.step()
                b = int((w > 0).sum())
                total += float(value) * b
                n += b
        n_fit = len(s["cols"]["fit"]["weight"])
        return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "n_examples": n_fit,
                "loss": total / max(n, 1), "seconds": time.perf_counter() - t0}

    @_answer
    def evaluate(self, *, fold: int, key: str, setup: dict, state: dict, splits=("val", "test")) -> dict:
        """Per split: Harrell's C and its pair counts (module doc)."""
        from sksurv.metrics import concordance_index_censored

        from mmray.train.loop_core import predict

        s = self._setup(fold, key, setup)
        model = s["spec"].build()
        model.load_state_dict(state)
        out = {}
        for split in splits:
            cols = s["cols"].get(split)
            if cols is None:
                continue
            pred = predict(model, (b for b, _ in D.batches(cols, **s["kw"])))
            risk, t, e = pred.risk(s["spec"].task), pred.time_days, pred.event.astype(bool)
            res = {"n": int(len(t)), "n_events": int(e.sum()), "concordant": 0, "discordant": 0, "tied_risk": 0,
                   "c": float("nan")}
            if e.any() and len(t) > 1:
                try:
                    c, conc, disc, tr, _ = concordance_index_censored(e, t, risk)
                    res.update(c=float(c), concordant=int(conc), discordant=int(disc), tied_risk=int(tr))
                except ValueError:  # no comparable pair
                    pass
            out[split] = res
        return out

    @_answer
    def check_model(self, *, estimator, features) -> dict:
        """Max |risk from the served features - risk from whole rows| over this site's rows."""
        from mmray.train.evaluate import risk_of

        t = with_columns(self.table, estimator.predictor.pre)
        full = risk_of(estimator.task, np.asarray(estimator.predictor.outputs(t), dtype=float))
        x = t.reindex(columns=list(features)).to_numpy(dtype=float)
        served = estimator.predict(x)
        return {"max_abs_diff": float(np.max(np.abs(served - full))) if len(t) else 0.0, "n": int(len(t))}

    @_answer
    def lineage(self) -> dict:
        from mmray.train.signature_data import folds_hash

        ev = self.table["event"].astype(bool)
        return {"store": self.store.uri, "feature_versions": dict(self.versions), "folds": self.folds_ref,
                "folds_hash": folds_hash(self.folds), "n_patients": int(self.table["patient_id"].nunique()),
                "n_events": int(ev.sum())}

    @_answer
    def ping(self) -> dict:
        return {"site": self.name}


def site_actor(name: str, site, *, modalities, task: str, labels_group: str, n_folds: int, folds_seed: int,
               val_fraction: float, seed: int, drop_rounds=(), drop_prob: float = 0.0):
    """A :class:`SiteData` Ray actor pinned to the nodes that declare ``site_<name>`` (restarted once if killed)."""
    import ray

    cls = ray.remote(SiteData).options(num_cpus=site.cpus, resources={f"site_{name}": site.resource_amount},
                                       max_restarts=-1, max_task_retries=0, name=None)
    return cls.remote(name, store=site.store, modalities=modalities, task=task, labels_group=labels_group,
                      n_folds=n_folds, folds_seed=folds_seed, val_fraction=val_fraction, seed=seed,
                      drop_rounds=drop_rounds, drop_prob=drop_prob)
