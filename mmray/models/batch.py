"""The batch contract every mmray torch model consumes, and its collate function.

A :class:`Batch` holds ``B`` patients:

``features``  ``dict[str, Tensor[B, d_m]]`` float32, one entry per *tabular*
              modality the model was built for: ``clinical``, ``expression``,
              ``mutations_cnv`` (mutation and CNV calls concatenated),
              ``proteins`` (RPPA-style protein levels),
              ``radiomics``, ``ct_deep`` (3D CNN embedding of the tumour-centred
              CT crop), ``slide`` (patient-level extremum / mean slide
              features).  A missing modality arrives as a row of zeros.
``mask``      ``Tensor[B, M]`` bool, ``mask[b, j]`` is True when patient ``b``
              has modality ``modalities[j]``.  Column order is
              ``batch.modalities``, which :func:`collate` takes from
              ``model.modalities``; models look columns up by name
              (:meth:`Batch.present`), so a batch with extra columns works too.
``bag_feats`` ``Tensor[N_total, d]`` float32, optional: the tiles of every
              patient's slide bag(s) concatenated, no padding.
``bag_index`` ``Tensor[N_total]`` long: the patient (row of the batch) each tile
              belongs to.  A patient without a slide has zero rows and
              ``mask[:, "tiles"]`` False.  The bag modality is named
              :data:`BAG` (``"tiles"``) in ``modalities``.
labels        ``time_days`` ``Tensor[B]`` float32 (> 0), ``event`` ``Tensor[B]``
              bool, ``subtype`` ``Tensor[B]`` long class index; for multi-task
              models ``response`` ``Tensor[B]`` long (-1: unknown) and
              ``toxicity`` ``Tensor[B, T]`` float (1/0, NaN: unknown); each
              optional (None) so prediction batches need no labels.

Models must never let a masked modality influence their output: they select
with ``torch.where`` (never multiply, so NaN in a masked slot cannot leak)
and ignore tiles of patients whose bag is masked.

A *sample* (one patient, what a ``Dataset`` yields) is a dict::

    {"features": {"expression": array[d], ...},   # missing modality: absent or None
     "bag": array[n_tiles, d] | None,             # optional
     "time_days": float, "event": bool, "subtype": int,   # optional labels
     "patient_id": str}                            # optional
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from mmray.errors import DataError

TABULAR_MODALITIES = ("clinical", "expression", "mutations_cnv", "proteins", "radiomics", "ct_deep", "slide")
BAG = "tiles"
ALL_MODALITIES = TABULAR_MODALITIES + (BAG,)


@dataclass
class Batch:
    """``B`` patients: tabular features, modality mask, optional tile bags, labels."""

    features: dict[str, torch.Tensor]
    mask: torch.Tensor
    modalities: tuple[str, ...]
    bag_feats: torch.Tensor | None = None
    bag_index: torch.Tensor | None = None
    time_days: torch.Tensor | None = None
    event: torch.Tensor | None = None
    subtype: torch.Tensor | None = None
    patient_ids: list[str] = field(default_factory=list)
    response: torch.Tensor | None = None
    toxicity: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def present(self, modality: str) -> torch.Tensor:
        """``Tensor[B]`` bool: which patients have ``modality``."""
        try:
            return self.mask[:, self.modalities.index(modality)]
        except ValueError:
            raise DataError(f"batch has no mask column for modality {modality!r}; it has "
                            f"{list(self.modalities)}. Collate with modalities=model.modalities") from None

    def feature(self, modality: str) -> torch.Tensor:
        """``Tensor[B, d_m]`` features of a tabular modality."""
        if modality not in self.features:
            raise DataError(f"batch has no features for modality {modality!r}; it has "
                            f"{sorted(self.features)}")
        return self.features[modality]

    def to(self, device: torch.device | str) -> Batch:
        def mv(t):
            return None if t is None else t.to(device, non_blocking=True)
        return replace(self, features={k: mv(v) for k, v in self.features.items()}, mask=mv(self.mask),
                       bag_feats=mv(self.bag_feats), bag_index=mv(self.bag_index),
                       time_days=mv(self.time_days), event=mv(self.event), subtype=mv(self.subtype),
                       response=mv(self.response), toxicity=mv(self.toxicity))


def _as_row(x: Any, *, modality: str, dim: int | None, pid: str) -> np.ndarray | None:
    if x is None:
        return None
    arr = np.asarray(x, dtype=np.float32).reshape(-1)
    if dim is not None and arr.shape[0] != dim:
        raise DataError(f"patient {pid}: modality {modality!r} has {arr.shape[0]} features, "
                        f"other patients have {dim}")
    return arr


def collate(samples: Sequence[Mapping[str, Any]], *, modalities: Sequence[str],
            dims: Mapping[str, int] | None = None, bag_dim: int | None = None) -> Batch:
    """Stack per-patient samples (see module doc) into a :class:`Batch`.

    ``modalities`` fixes the mask columns (pass ``model.modalities``).
    ``dims`` gives each tabular modality's width so a batch in which nobody has
    that modality still gets a ``[B, d_m]`` zero block; without it the width
    is taken from the first patient that has it.  Bags are concatenated
    without padding; ``bag_index`` says whose tile each row is.
    """
    if not samples:
        raise DataError("collate got no samples")
    modalities = tuple(modalities)
    B = len(samples)
    dims = dict(dims or {})
    feats: dict[str, torch.Tensor] = {}
    mask = torch.zeros(B, len(modalities), dtype=torch.bool)
    for j, m in enumerate(modalities):
        if m == BAG:
            continue
        rows = [_as_row((s.get("features") or {}).get(m), modality=m, dim=dims.get(m),
                        pid=str(s.get("patient_id", i))) for i, s in enumerate(samples)]
        d = dims.get(m) or next((r.shape[0] for r in rows if r is not None), None)
        if d is None:
            raise DataError(f"no patient in the batch has modality {m!r} and its width is unknown; "
                            f"pass dims={{'{m}': d}} to collate")
        block = np.zeros((B, d), dtype=np.float32)
        for i, r in enumerate(rows):
            if r is not None:
                if r.shape[0] != d:
                    raise DataError(f"modality {m!r}: expected {d} features, patient "
                                    f"{samples[i].get('patient_id', i)} has {r.shape[0]}")
                block[i] = r
                mask[i, j] = True
        feats[m] = torch.from_numpy(block)
    bag_feats = bag_index = None
    if BAG in modalities:
        parts, idx = [], []
        for i, s in enumerate(samples):
            bag = s.get("bag")
            if bag is None:
                continue
            bag = np.asarray(bag, dtype=np.float32)
            if bag.ndim != 2:
                raise DataError(f"patient {s.get('patient_id', i)}: bag must be [n_tiles, d], got shape {bag.shape}")
            if bag.shape[0] == 0:
                continue
            parts.append(bag)
            idx.append(np.full(bag.shape[0], i, dtype=np.int64))
        d = bag_dim or (parts[0].shape[1] if parts else None)
        if d is None:
            raise DataError("no patient in the batch has tiles and bag_dim is unknown; pass bag_dim to collate")
        if any(p.shape[1] != d for p in parts):
            raise DataError(f"tile features must all have {d} columns, got {sorted({p.shape[1] for p in parts})}")
        bag_feats = torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, d), np.float32))
        bag_index = torch.from_numpy(np.concatenate(idx) if idx else np.zeros(0, np.int64))
        mask[:, modalities.index(BAG)] = torch.bincount(bag_index, minlength=B) > 0

    def label(key, dtype):
        vals = [s.get(key) for s in samples]
        if all(v is None for v in vals):
            return None
        if any(v is None for v in vals):
            raise DataError(f"label {key!r} is given for some patients of the batch but not all")
        return torch.as_tensor(np.asarray(vals), dtype=dtype)

    tox = None
    if any(s.get("toxicity") is not None for s in samples):
        if any(s.get("toxicity") is None for s in samples):
            raise DataError("label 'toxicity' is given for some patients of the batch but not all")
        tox = torch.as_tensor(np.stack([np.asarray(s["toxicity"], np.float32).reshape(-1) for s in samples]))
    return Batch(features=feats, mask=mask, modalities=modalities, bag_feats=bag_feats, bag_index=bag_index,
                 time_days=label("time_days", torch.float32), event=label("event", torch.bool),
                 subtype=label("subtype", torch.long),
                 patient_ids=[str(s.get("patient_id", i)) for i, s in enumerate(samples)],
                 response=label("response", torch.long), toxicity=tox)


def make_batch(features: Mapping[str, np.ndarray | torch.Tensor], mask: np.ndarray | torch.Tensor, *,
               modalities: Sequence[str], bag_feats=None, bag_index=None, time_days=None, event=None,
               subtype=None, patient_ids: Sequence[str] | None = None, response=None, toxicity=None) -> Batch:
    """Build a :class:`Batch` from whole arrays (``[B, d_m]`` each, ``mask [B, M]``).

    Masked rows are zeroed here, so what the model sees for a missing
    modality never depends on what the caller had in those slots.
    """
    modalities = tuple(modalities)
    mask_t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
    if mask_t.ndim != 2 or mask_t.shape[1] != len(modalities):
        raise DataError(f"mask must be [B, {len(modalities)}] for modalities {list(modalities)}, "
                        f"got shape {tuple(mask_t.shape)}")
    B = mask_t.shape[0]
    feats = {}
    for m, x in features.items():
        t = torch.as_tensor(x, dtype=torch.float32)
        if t.ndim != 2 or t.shape[0] != B:
            raise DataError(f"features[{m!r}] must be [B={B}, d], got shape {tuple(t.shape)}")
        if m in modalities:
            t = torch.where(mask_t[:, modalities.index(m), None], t, torch.zeros((), dtype=t.dtype))
        feats[m] = t

    def opt(x, dtype):
        return None if x is None else torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x,
                                                       dtype=dtype)
    return Batch(features=feats, mask=mask_t, modalities=modalities,
                 bag_feats=opt(bag_feats, torch.float32), bag_index=opt(bag_index, torch.long),
                 time_days=opt(time_days, torch.float32), event=opt(event, torch.bool),
                 subtype=opt(subtype, torch.long), patient_ids=list(patient_ids or []),
                 response=opt(response, torch.long), toxicity=opt(toxicity, torch.float32))


class PatientDataset(torch.utils.data.Dataset):
    """Per-patient samples (module doc) over whole arrays, for a ``DataLoader`` with :func:`collate`.

    ``features[m]`` ``[n, d_m]``, ``present[m]`` ``[n]`` bool; ``bags`` an
    optional list of ``n`` arrays ``[n_tiles_i, d]`` (None or 0 rows: no
    slide); labels ``[n]`` each, optional.
    """

    def __init__(self, features: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], *,
                 bags: Sequence[np.ndarray | None] | None = None, time_days=None, event=None, subtype=None,
                 patient_ids: Sequence[str] | None = None, response=None, toxicity=None):
        n = {len(v) for v in features.values()} | {len(v) for v in present.values()}
        if bags is not None:
            n.add(len(bags))
        if len(n) != 1:
            raise DataError(f"PatientDataset: arrays disagree on the number of patients: {sorted(n)}")
        if set(features) != set(present):
            raise DataError(f"PatientDataset: features {sorted(features)} and present {sorted(present)} differ")
        self.n = n.pop()
        self.features = {m: np.asarray(v, dtype=np.float32) for m, v in features.items()}
        self.present = {m: np.asarray(v, dtype=bool) for m, v in present.items()}
        self.bags = bags
        self.labels = {"time_days": time_days, "event": event, "subtype": subtype, "response": response,
                       "toxicity": toxicity}
        self.patient_ids = list(patient_ids) if patient_ids is not None else [str(i) for i in range(self.n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        s = {"features": {m: (x[i] if self.present[m][i] else None) for m, x in self.features.items()},
             "patient_id": self.patient_ids[i]}
        if self.bags is not None:
            s["bag"] = self.bags[i]
        for k, v in self.labels.items():
            if v is not None:
                s[k] = v[i] if k == "toxicity" else (v[i].item() if hasattr(v[i], "item") else v[i])
        return s

    @property
    def dims(self) -> dict[str, int]:
        return {m: x.shape[1] for m, x in self.features.items()}
