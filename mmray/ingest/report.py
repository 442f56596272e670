"""What one modality's ingest did: counts, versions written, and every failure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModalityReport:
    modality: str
    n_items: int = 0  # inputs seen (slides, studies, table rows, samples)
    n_done: int = 0  # processed in this run
    n_skipped: int = 0  # already in the store with the same settings (resume)
    failures: list[dict] = field(default_factory=list)  # {item, patient_id, reason, ...}
    groups: dict[str, str] = field(default_factory=dict)  # feature group -> version written
    notes: list[str] = field(default_factory=list)  # warnings worth a line in the summary
    seconds: float = 0.0

    def fail(self, *, item: str, patient_id: str, reason: str, **details) -> None:
        self.failures.append({"item": item, "patient_id": patient_id, "reason": reason, **details})

    def one_line(self) -> str:
        groups = ", ".join(f"{g}@{v}" for g, v in self.groups.items()) or "nothing written"
        return (f"{self.modality}: {self.n_items} inputs, {self.n_done} done, {self.n_skipped} skipped, "
                f"{len(self.failures)} failed -> {groups} ({self.seconds:.1f} s)")


def summarise(reports: list[ModalityReport]) -> str:
    """A table of the reports plus every failure, for the end of a command."""
    lines = [f"{'modality':<12} {'inputs':>7} {'done':>6} {'skipped':>8} {'failed':>7} {'seconds':>8}  groups"]
    for r in reports:
        groups = ", ".join(f"{g}@{v}" for g, v in r.groups.items()) or "-"
        lines.append(f"{r.modality:<12} {r.n_items:>7} {r.n_done:>6} {r.n_skipped:>8} {len(r.failures):>7} "
                     f"{r.seconds:>8.1f}  {groups}")
    failures = [(r.modality, f) for r in reports for f in r.failures]
    if failures:
        lines.append(f"\n{len(failures)} input(s) failed (also in the store's failures table):")
        lines += [f"  - [{m}] {f['patient_id']} {f['item']}: {f['reason']}" for m, f in failures]
    notes = [(r.modality, n) for r in reports for n in r.notes]
    if notes:
        lines.append("\nNotes:")
        lines += [f"  - [{m}] {n}" for m, n in notes]
    return "\n".join(lines)
