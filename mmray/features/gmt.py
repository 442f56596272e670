"""Gene sets in MSigDB GMT format: ``name<TAB>description<TAB>gene<TAB>gene...``.

Real GMTs name genes a platform lacks; :func:`genes_found` says which members
of each set a matrix has, and signature models use only those.  A line with
no gene (fewer than three fields) or a set name seen before is reported and
skipped; repeated genes within a set count once; blank lines and ``#`` lines
are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmray.errors import CohortError
from mmray.features.table_io import file_name, read_text


@dataclass(frozen=True)
class GeneSet:
    name: str
    description: str
    genes: tuple[str, ...]


def parse_gmt(text: str, *, path: str = "<gmt>") -> tuple[dict[str, GeneSet], list[dict]]:
    """``({name: GeneSet} in file order, problems)``; each problem names file and line."""
    sets: dict[str, GeneSet] = {}
    problems: list[dict] = []
    name_of = file_name(path)
    for i, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        name = fields[0].strip()
        genes = tuple(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
        problem = None
        if not name:
            problem = "the set has no name (first field empty)"
        elif len(fields) < 3 or not genes:
            problem = (f"set {name!r} lists no gene ({len(fields)} tab-separated field(s); expected "
                       f"name, description, gene, gene, ...)")
        elif name in sets:
            problem = f"set {name!r} appears again (first at an earlier line); this line is skipped"
        if problem:
            problems.append({"item": f"{name_of}:{i}", "patient_id": None, "file": name_of, "line": i,
                             "reason": f"{name_of} line {i}: {problem}"})
            continue
        sets[name] = GeneSet(name=name, description=fields[1].strip(), genes=genes)
    return sets, problems


def read_gmt(path: str) -> tuple[dict[str, GeneSet], list[dict]]:
    """Read a GMT file (local or ``s3://``); raises when it holds no usable set."""
    sets, problems = parse_gmt(read_text(path, what="signatures (GMT)"), path=path)
    if not sets:
        first = problems[0]["reason"] if problems else "the file is empty"
        raise CohortError(f"{path} holds no usable gene set ({first}); a GMT line is "
                          f"name<TAB>description<TAB>gene<TAB>gene...")
    return sets, problems


def genes_found(sets: dict[str, GeneSet], genes) -> dict[str, tuple[str, ...]]:
    """Set name -> its genes present in ``genes`` (set order kept)."""
    have = set(map(str, genes))
    return {name: tuple(g for g in s.genes if g in have) for name, s in sets.items()}
