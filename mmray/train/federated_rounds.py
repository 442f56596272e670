"""The coordinator's rounds: call the sites, average their weights (FedAvg / FedProx), pool their C-indices.

:class:`Sites` holds one actor per site (:func:`mmray.train.federated_site.site_actor`)
and calls a method on some of them with a time limit; every answer passes
through :meth:`Sites.receive` (a test hook records exactly what crossed).
A site that raises, times out or whose actor died is *left out of that
call* with the reason; a killed actor is restarted by Ray from its store and
answers the next round.  :func:`fit_fold` runs one federated fit:
federated preprocessing, then rounds of

1. sample ``clients_per_round`` of the sites (seeded);
2. each sampled site trains ``local_epochs`` from the global weights;
3. the global weights become the average of the answers weighted by their
   training rows (McMahan et al. 2017); with fewer than ``min_sites``
   answers the round keeps the previous weights;
4. every site scores the new global weights on its inner-validation rows
   and its test fold: per-site Harrell's C and the pooled C of their summed
   concordant / discordant / tied pairs (site-stratified Harrell's C: pairs
   within a site; no risk score leaves a site);

with early stopping on the pooled validation C (``patience`` rounds); the
fold's result is the best round's test scores.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mmray.errors import DataError
from mmray.progress import RateLog
from mmray.train.epoch import TorchSpec
from mmray.train.federated_config import FederatedConfig
from mmray.train.federated_stats import FederatedPreprocessing
from mmray.train.preprocess import ModalityLayout

log = logging.getLogger("mmray.federated")


class Sites:
    """The site actors, called with a time limit; ``on_receive(site, method, answer)`` sees every answer."""

    def __init__(self, actors: dict, *, timeout_s: float, on_receive: Callable | None = None):
        self.actors, self.timeout_s, self.on_receive = dict(actors), float(timeout_s), on_receive

    @property
    def names(self) -> list[str]:
        return list(self.actors)

    def receive(self, site: str, method: str, answer):
        if self.on_receive is not None:
            self.on_receive(site, method, answer)
        return answer

    def call(self, names: Sequence[str], method: str, **kwargs) -> tuple[dict, dict]:
        """``({site: answer}, {site: why it gave none})`` for ``method(**kwargs)`` on ``names``."""
        import ray

        refs = {getattr(self.actors[n], method).remote(**kwargs): n for n in names}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self.timeout_s)
        answers, failed = {}, {}
        for ref in ready:
            name = refs[ref]
            try:
                answers[name] = self.receive(name, method, ray.get(ref))
            except Exception as e:  # noqa: BLE001  one site's failure leaves it out; the others go on
                failed[name] = _reason(e)
        for ref in pending:
            failed[refs[ref]] = f"no answer within {self.timeout_s:g} s"
        return answers, failed

    def ask_all(self, method: str, **kwargs) -> list:
        """Every site's answer (preprocessing needs them all): a failed site is retried once, then an error."""
        answers, failed = self.call(self.names, method, **kwargs)
        if failed:
            again, failed = self.call(list(failed), method, **kwargs)
            answers.update(again)
        if failed:
            raise DataError(f"federated preprocessing ({method}) needs every site; no answer from "
                            + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        return [answers[n] for n in self.names]


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    cause = getattr(e, "cause", None)
    if cause is not None:
        text = [f"{type(cause).__name__}: {cause}"]
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:500]


def fedavg(answers: Sequence[dict]) -> dict:
    """Weighted mean of ``state`` over answers, weights ``n_examples``; non-float buffers from the first."""
    total = float(sum(a["n_examples"] for a in answers))
    if total <= 0:
        raise DataError("no site trained on any row this round")
    first = answers[0]["state"]
    out = {}
    for k, v in first.items():
        if torch.is_floating_point(v):
            out[k] = sum(a["state"][k].to(torch.float64) * (a["n_examples"] / total) for a in answers).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def pooled_c(evals: dict, split: str) -> tuple[float, int]:
    """Site-stratified Harrell's C of ``split`` from pair counts, and the number of sites that gave one."""
    conc = disc = tied = 0
    k = 0
    for ev in evals.values():
        e = ev.get(split)
        if e and e["concordant"] + e["discordant"] + e["tied_risk"] > 0:
            conc, disc, tied, k = conc + e["concordant"], disc + e["discordant"], tied + e["tied_risk"], k + 1
    pairs = conc + disc + tied
    return ((conc + 0.5 * tied) / pairs if pairs else math.nan), k


@dataclass
class FoldFit:
    fold: int
    best_round: int
    best_state: dict
    spec: TorchSpec
    pre: object  # the federated Preprocessor
    table_columns: list[str]
    rounds: list[dict] = field(default_factory=list)  # one row per round
    test: dict = field(default_factory=dict)  # best round: pooled_c, site -> c

    @property
    def best(self) -> dict:
        return next(r for r in self.rounds if r["round"] == self.best_round)


def fit_fold(sites: Sites, cfg: FederatedConfig, *, fold: int, on_round: Callable | None = None) -> FoldFit:
    """One federated fit (module doc); ``fold`` -1 fits on every row (no test fold)."""
    import ray

    def ask(method, **kw):
        return sites.ask_all(method, fold=fold, **kw)

    mods = tuple(cfg.modalities)
    fp = FederatedPreprocessing(ask, task=cfg.task, modalities=mods, layout=ModalityLayout(),
                                top_k_var={m: k for m, k in cfg.preprocess.top_k_var.items() if m in mods},
                                screen={m: dict(v) for m, v in cfg.preprocess.screen.items() if m in mods})
    t0 = time.perf_counter()
    pre = fp.fit()
    bins = fp.time_bins(cfg.n_bins) if cfg.task == "survival_discrete" else None
    log.info("fold %s: federated preprocessing over %d sites in %.1f s: %s", fold, len(sites.names),
             time.perf_counter() - t0, ", ".join(f"{m} {d}" for m, d in pre.dims.items()))
    spec = TorchSpec(model=cfg.model, task=cfg.task, modality_dims=pre.dims, n_out=bins.n_bins if bins else 1,
                     hparams=dict(cfg.hparams), lr=cfg.lr, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                     max_epochs=cfg.rounds * cfg.local_epochs, patience=cfg.patience,
                     seed=cfg.seed + 1000 * max(fold, 0), grad_clip=cfg.grad_clip, ties=cfg.ties,
                     bins=bins.to_dict() if bins else None)
    torch.manual_seed(spec.seed)
    state = {k: v.detach().clone() for k, v in spec.build().state_dict().items()}
    setup = ray.put({"pre": pre, "spec": spec})
    key = f"{fold}:{spec.seed}:{time.time_ns()}"
    rng = np.random.default_rng([cfg.seed, max(fold, 0) + 1])
    k = max(1, int(round(cfg.clients_per_round * len(sites.names))))
    best_c, best_round, best_state, bad = -math.inf, -1, state, 0
    rows: list[dict] = []
    progress = RateLog(log, f"federated {'final fit' if fold < 0 else f'fold {fold}'}", cfg.rounds, unit="rounds")
    for rnd in range(cfg.rounds):
        r0 = time.perf_counter()
        sampled = sorted(rng.choice(sites.names, size=k, replace=False).tolist())
        answers, dropped = sites.call(sampled, "train_round", fold=fold, rnd=rnd, key=key, setup=setup,
                                      state=ray.put(state), local_epochs=cfg.local_epochs,
                                      mu=cfg.mu if cfg.algorithm == "fedprox" else 0.0)
        updated = len(answers) >= cfg.failures.min_sites
        if updated:
            state = fedavg(list(answers.values()))
        evals, eval_failed = sites.call(sites.names, "evaluate", fold=fold, key=key, setup=setup,
                                        state=ray.put(state), splits=("val", "test") if fold >= 0 else ("val",))
        row = {"fold": fold, "round": rnd, "sampled": sampled, "trained": sorted(answers), "dropped": dropped,
               "eval_failed": eval_failed, "updated": updated, "seconds": time.perf_counter() - r0,
               "train_loss": (float(np.average([a["loss"] for a in answers.values()],
                                               weights=[a["n_examples"] for a in answers.values()]))
                              if answers else math.nan)}
        for split in ("val", "test"):
            row[f"c_pooled_{split}"], row[f"n_sites_{split}"] = pooled_c(evals, split)
            row[f"c_site_{split}"] = {s: ev[split]["c"] for s, ev in evals.items() if split in ev}
        rows.append(row)
        if dropped:
            log.warning("fold %s round %d: %d of %d sampled site(s) gave no update (%s)%s", fold, rnd, len(dropped),
                        len(sampled), "; ".join(f"{s}: {why}" for s, why in dropped.items()),
                        "" if updated else "; the global model is kept")
        if on_round is not None:
            on_round(row)
        c = row["c_pooled_val"]
        if math.isfinite(c) and c > best_c + 1e-4:
            best_c, best_round, best_state, bad = c, rnd, state, 0
        else:
            bad += 1
        progress.tick()
        log.info("fold %s round %d: pooled C val %.3f test %.3f; %d/%d sites trained (%.1f s)", fold, rnd, c,
                 row["c_pooled_test"], len(answers), len(sampled), row["seconds"])
        if bad >= cfg.patience:
            log.info("fold %s: no better pooled validation C for %d rounds; stopping at round %d", fold, bad, rnd)
            break
    if best_round < 0:
        best_round = rows[-1]["round"]
    fit = FoldFit(fold, best_round, best_state, spec, pre, fp.table_columns, rows)
    b = fit.best
    fit.test = {"c_pooled": b["c_pooled_test"], "c_site": dict(b["c_site_test"]), "c_pooled_val": b["c_pooled_val"]}
    return fit
