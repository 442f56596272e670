"""Report sections about the data: cohort overview, modality coverage (bar chart + UpSet-style matrix), failures."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from mmray.report import render
from mmray.report.document import InputMissing, figure, para
from mmray.report.inputs import ingest_command
from mmray.store import FeatureStore

# report modality -> (store group, failure stage of its ingest: mmray.ingest.run records "ingest-<modality>")
MODALITY_GROUPS = {"clinical": ("clinical", "ingest-clinical"), "expression": ("expression", "ingest-expression"),
                   "mutations": ("mutations", "ingest-mutations"), "cnv": ("cnv", "ingest-cnv"),
                   "CT radiomics": ("radiomics", "ingest-ct"), "CT deep features": ("ct_embedding", "ingest-ct_deep"),
                   "slides (WSI)": ("wsi_patient", "ingest-wsi")}
MANIFEST_MODALITY = {"CT radiomics": "ct", "CT deep features": "ct", "slides (WSI)": "wsi"}


def patients_by_modality(store: FeatureStore) -> dict[str, set[str]]:
    """Report modality -> patient ids with a row in its latest group (modalities without a group left out)."""
    have = set(store.groups())
    return {m: set(store.read_table(g, columns=["patient_id"])["patient_id"].astype(str))
            for m, (g, _) in MODALITY_GROUPS.items() if g in have}


def coverage_table(store: FeatureStore, manifest: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per modality: patients with data, share of the labelled patients, inputs that failed."""
    if "labels" not in store.groups():
        raise InputMissing(f"no labels group in {store.uri}", ingest_command(store))
    labelled = set(store.read_table("labels", columns=["patient_id"])["patient_id"].astype(str))
    present = patients_by_modality(store)
    failures = store.failures()
    rows = []
    for m, (group, stage) in MODALITY_GROUPS.items():
        pats = present.get(m, set())
        row = {"modality": m, "group": group if m in present else f"{group} (not ingested)",
               "patients": len(pats), "labelled with data": len(pats & labelled),
               "share of labelled": len(pats & labelled) / len(labelled) if labelled else None,
               "failed inputs": int((failures["stage"] == stage).sum()) if len(failures) else 0}
        if manifest is not None and m in MANIFEST_MODALITY:
            sel = manifest[manifest["modality"] == MANIFEST_MODALITY[m]]
            row["in cohort manifest"] = f"{sel['patient_id'].nunique()} patients, {len(sel)} files"
        rows.append(row)
    return pd.DataFrame(rows), {"labelled": labelled, "present": present}


def coverage_bar(table: pd.DataFrame):
    fig = render.new_figure(6.5, 0.45 * len(table) + 1.0)
    ax = fig.add_subplot(1, 1, 1)
    share = table["share of labelled"].fillna(0).to_numpy(float)
    y = np.arange(len(table))
    ax.barh(y, share, color="#1565c0")
    for k, (s, n) in enumerate(zip(share, table["labelled with data"])):
        ax.text(min(s, 1.0) + 0.01, k, f"{n} ({s:.0%})", va="center", fontsize=8)
    ax.set_yticks(y, labels=table["modality"])
    ax.set_xlim(0, 1.18)
    ax.invert_yaxis()
    ax.set_xlabel("share of labelled patients with the modality")
    return fig


def upset_figure(present: dict[str, set[str]], patients: set[str], *, max_combos: int = 15):
    """UpSet-style plot: how many patients have each exact combination of modalities."""
    mods = list(present)
    combos = pd.Series([tuple(p in present[m] for m in mods) for p in sorted(patients)]).value_counts()
    combos = combos.iloc[:max_combos]
    fig = render.new_figure(max(5.0, 0.45 * len(combos) + 2.5), 4.2)
    grid = fig.add_gridspec(2, 1, height_ratios=[2, 1.3], hspace=0.05)
    top, bottom = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    x = np.arange(len(combos))
    top.bar(x, combos.to_numpy(), color="#455a64")
    for k, n in enumerate(combos.to_numpy()):
        top.text(k, n, str(n), ha="center", va="bottom", fontsize=8)
    top.set_ylabel("patients")
    top.yaxis.get_major_locator().set_params(integer=True)
    top.set_xticks([])
    top.set_xlim(-0.6, len(combos) - 0.4)
    for k, combo in enumerate(combos.index):
        on = [j for j, v in enumerate(combo) if v]
        bottom.scatter([k] * len(mods), range(len(mods)), color="#dddddd", s=40)
        bottom.scatter([k] * len(on), on, color="#222222", s=40)
        if len(on) > 1:
            bottom.plot([k, k], [min(on), max(on)], color="#222222", linewidth=1.5)
    bottom.set_yticks(range(len(mods)), labels=mods, fontsize=8)
    bottom.set_xticks([])
    bottom.set_xlim(-0.6, len(combos) - 0.4)
    bottom.invert_yaxis()
    return fig, combos


def overview_section(store: FeatureStore, *, cohort_name: str | None, manifest: pd.DataFrame | None) -> list[str]:
    if "labels" not in store.groups():
        raise InputMissing(f"no labels group in {store.uri}", ingest_command(store))
    labels = store.read_table("labels")
    per_patient = labels.sort_values("event_time").drop_duplicates("patient_id", keep="last") \
        if "event_time" in labels else labels.drop_duplicates("patient_id")
    facts = [("patients with labels", per_patient["patient_id"].nunique())]
    if {"time_days", "event"} <= set(per_patient.columns):
        ev = pd.to_numeric(per_patient["event"], errors="coerce")
        facts += [("events", int((ev == 1).sum())), ("censored", int((ev == 0).sum())),
                  ("median follow-up (days)", f"{np.nanmedian(per_patient['time_days'].astype(float)):.0f}")]
    if "subtype" in per_patient:
        counts = per_patient["subtype"].fillna("(missing)").astype(str).value_counts()
        facts.append(("subtypes", ", ".join(f"{k}: {v}" for k, v in counts.items())))
    body = [para(f"Cohort <b>{html.escape(cohort_name)}</b>.") if cohort_name else "",
            render.table([{"what": k, "value": v} for k, v in facts], [("what", "labels"), ("value", "")])]
    table, info = coverage_table(store, manifest)
    cols = [(c, c) for c in table.columns]
    patients = set(info["labelled"]).union(*info["present"].values())
    shown = table.assign(**{"share of labelled": [f"{v:.0%}" if v is not None else None
                                                   for v in table["share of labelled"]]})
    body += ["<h3>Modality coverage</h3>",
             para("Patients with a row in each modality's feature group (latest version); failed inputs are "
                  "those the ingest recorded in the failures table."),
             render.table(shown.to_dict("records"), cols),
             figure(coverage_bar(table), alt="modality coverage",
                    caption="Share of labelled patients that have each modality.")]
    if info["present"]:
        fig, combos = upset_figure(info["present"], patients)
        body.append(figure(fig, alt="modality combinations", attrs={"combinations": len(combos)},
                           caption="Patients per exact combination of modalities (UpSet-style): a dark dot "
                                   "means the modality is present."))
    body += ["<h3>Feature groups</h3>", render.table(_group_rows(store), [(k, k) for k in
                                                                          ("group", "version", "kind", "rows",
                                                                           "bags", "created (UTC)")])]
    return body


def _group_rows(store: FeatureStore) -> list[dict]:
    rows = []
    for g in store.groups():
        m = store.manifest(g)
        rows.append({"group": g, "version": m["version"], "kind": m["kind"], "rows": m["num_rows"],
                     "bags": m.get("num_bags"), "created (UTC)": str(m["created_utc"])[:19]})
    return rows


def failures_section(store: FeatureStore) -> list[str]:
    table = store.failures()
    if table.empty:
        return [para("No failures recorded: every input the ingest read was used.")]
    counts = table["stage"].value_counts()
    summary = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in counts.items())
    rows = table.sort_values(["stage", "patient_id"]).to_dict("records")
    return [para(f"<b>{len(table)}</b> input(s) failed and were left out ({summary}); the rest of each job "
                 f"went on."),
            render.table(rows, [("stage", "stage"), ("patient_id", "patient"), ("item", "input"),
                                ("reason", "reason"), ("recorded_utc", "recorded (UTC)")])]
