"""``mmray explain``: per-patient explanations of a registered model from the store's features.

Loads ``models:/<name>@<alias>`` (or a version) from the store's registry,
builds each patient's row from the store (:func:`~mmray.report.explain_data.patient_rows`),
explains it (:func:`~mmray.report.explain.explain_row`) and adds the slide
locations behind it. Patient ids may be given raw (pseudonymised with the
configured key) or as the store's ids; the output only holds store ids.
"""

from __future__ import annotations

import logging
import time

from mmray.errors import DataError, RegistryError
from mmray.registry.config import RegistryConfig
from mmray.report.explain import explain_row
from mmray.report.explain_data import patient_rows, resolve_patients, slide_links
from mmray.store import FeatureStore

log = logging.getLogger(__name__)


def load_model(store: str, name: str, *, version: str | None = None, registry: RegistryConfig | None = None):
    """``(model, version)`` of ``name`` at ``version`` or the registry's serving alias."""
    from mmray.registry.pyfunc import load_pyfunc
    from mmray.registry.registry import Registry

    cfg = registry or RegistryConfig()
    reg = Registry(cfg, store=store)
    if version is None:
        mv = reg.champion(name)
        if mv is None:
            names = sorted(m.name for m in reg.servable())
            raise RegistryError(f"no model {name!r} holds the alias {cfg.alias!r} in {reg.tracking_uri}; "
                                f"servable models: {', '.join(names[:20]) or 'none'}")
        version = str(mv.version)
    reg.activate()
    try:
        return load_pyfunc(f"models:/{name}/{version}", suppress_warnings=True), version
    except Exception as e:  # MLflow raises many types for a missing version or artifact
        raise RegistryError(f"cannot load model {name} version {version} from {reg.tracking_uri}: {e}") from e


def _store_patients(store: FeatureStore) -> set[str]:
    ids: set[str] = set()
    for g in store.groups():
        try:
            if store.manifest(g).get("kind") != "bag":
                ids.update(store.read_table(g, columns=["patient_id"])["patient_id"].astype(str))
        except (OSError, KeyError, DataError) as e:
            log.debug("explain: group %s unreadable for ids: %s", g, e)
    return ids


def explain_patients(store_uri: str, model_name: str, patients: list[str], *, version: str | None = None,
                     top_k: int = 10, registry: RegistryConfig | None = None) -> dict:
    """``{"model", "version", "patients": [explanation + patient_id, missing_modalities, slide_links],
    "unknown": [given ids not in the store]}``."""
    start = time.perf_counter()
    model, version = load_model(store_uri, model_name, version=version, registry=registry)
    store = FeatureStore(store_uri)
    found, unknown = resolve_patients(_store_patients(store), list(patients))
    default_group = str(model.info.get("group", "expression"))
    x, missing = patient_rows(store, model.features, found, default_group=default_group)
    out = []
    for i, pid in enumerate(found):
        e = explain_row(model, x[i], top_k=top_k, default_group=default_group)
        out.append({"patient_id": pid, **e, "missing_modalities": missing[pid],
                    "slide_links": slide_links(store, pid, e["top_features"], model=model.info.get("model"))})
    log.info("explain: %s v%s, %d patient(s) in %.1f s (%d unknown)", model_name, version, len(found),
             time.perf_counter() - start, len(unknown))
    return {"model": model_name, "version": version, "patients": out, "unknown": unknown}


def explanation_text(result: dict) -> str:
    """The human-readable form of :func:`explain_patients`'s result."""
    lines = [f"model {result['model']} v{result['version']}"]
    for p in result["patients"]:
        lines.append(f"\npatient {p['patient_id']}: risk {p['risk']:.4f}")
        if p["survival"]:
            s = p["survival"]
            lines.append("  survival: " + ", ".join(f"{t:g} d {q:.3f}" for t, q in
                                                    zip(s["times_days"], s["probabilities"])))
        for m in p["modalities"]:
            what = f"{m['contribution']:+.4f}" if m["present"] else "absent (masked as in training)"
            lines.append(f"  modality {m['modality']:<16} {m['n_features']:>4} features  {what}")
        lines.append("  top features:")
        lines += [f"    {e['feature']:<40} {e['value']:>10.4g}  {e['contribution']:+.4f}  {e['direction']}"
                  for e in p["top_features"]]
        if p["top_genes"]:
            lines.append("  top genes: " + ", ".join(f"{g['gene']} ({'+' if g['contribution'] > 0 else '-'})"
                                                     for g in p["top_genes"]))
        for link in p["slide_links"]:
            what = link.get("feature") or f"attention {link['attention']:.3g}"
            lines.append(f"  slide {link['slide_id']} at ({link['x']}, {link['y']}) level 0: {link['kind']} {what}")
    if result["unknown"]:
        lines.append(f"\nnot in the store: {len(result['unknown'])} patient id(s)")
    return "\n".join(lines)
