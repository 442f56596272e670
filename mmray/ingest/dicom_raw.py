"""Fast reads of simple header values (UIDs, numbers) straight from pydicom's raw elements.

pydicom converts and validates an element the first time it is accessed;
for the dozen geometry and identity attributes read from every file of a
series that costs more than parsing the file.  :func:`text` decodes the raw
bytes of text VRs (UI, DS, IS, CS, DA, ...) and of US directly, and falls
back to the converted value when pydicom already converted the element.
Never used for person names or other PHI (those go through pydicom).
"""

from __future__ import annotations

import struct
from functools import cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}


@cache
def _tag_vr(keyword: str) -> tuple[int, str]:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword!r} is not a DICOM keyword")
    return tag, dictionary_VR(tag)


def text(ds: Dataset, keyword: str) -> str | None:
    """The value as DICOM text (multiple values joined by ``\\``); ``None`` when absent or empty."""
    tag, vr = _tag_vr(keyword)
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(elem, RawDataElement) and isinstance(value, bytes):
        if vr in _BINARY:
            size = struct.calcsize(_BINARY[vr])
            if len(value) < size:
                return None
            order = "<" if elem.is_little_endian else ">"
            return str(struct.unpack(order + _BINARY[vr], value[:size])[0])
        out = value.decode("latin-1").strip(" \x00")
        return out or None
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value) or None
    out = str(value).strip()
    return out or None


def floats(ds: Dataset, keyword: str) -> list[float] | None:
    """Numeric (DS/IS/US) values as floats; ``None`` when absent.  Raises ValueError on non-numbers."""
    raw = text(ds, keyword)
    return None if raw is None else [float(v) for v in raw.split("\\")]


def number(ds: Dataset, keyword: str, default: float | None = None) -> float | None:
    values = floats(ds, keyword)
    return default if not values else values[0]
