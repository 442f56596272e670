"""Human-readable listings of a feature store (``mmray store ls`` / ``show``)."""

from __future__ import annotations

import json

from mmray.store.store import FeatureStore


def describe_groups(store: FeatureStore) -> str:
    """One line per group version: kind, rows, bags, created time; ``*`` marks latest."""
    groups = store.groups()
    if not groups:
        return f"{store.uri}: no feature groups yet"
    lines = [f"{store.uri}", f"  {'group':<28} {'version':<8} {'kind':<6} {'rows':>9} {'bags':>6}  created (UTC)"]
    for group in groups:
        latest = store.latest(group)
        for version in store.versions(group):
            m = store.manifest(group, version=version)
            mark = "*" if version == latest else " "
            bags = "" if m.get("num_bags") is None else str(m["num_bags"])
            lines.append(f"  {group:<28} {version + mark:<8} {m['kind']:<6} {m['num_rows']:>9} {bags:>6}  "
                         f"{m['created_utc'][:19]}")
    lines.append("  (* = latest)")
    return "\n".join(lines)


def describe_manifest(store: FeatureStore, group: str, *, version: str | None = None) -> str:
    """A group version's lineage: sources with checksums, parameters, code version, schema."""
    m = store.manifest(group, version=version)
    lines = [f"{group}@{m['version']} ({m['kind']}), {m['num_rows']} rows"
             + (f", {m['num_bags']} bags keyed by {m['bag_key']}" if m.get("bag_key") else ""),
             f"  created   {m['created_utc']}",
             f"  mmray     {m['mmray_version']} (git {m.get('git_revision') or 'unknown'})",
             f"  files     {len(m['files'])}",
             "  sources:"]
    for src in m.get("sources") or []:
        check = f"sha256 {src['sha256'][:16]}..." if src.get("sha256") else f"etag {src.get('etag')}"
        lines.append(f"    {src['uri']}  ({src.get('size_bytes', '?')} bytes, {check})")
    if not m.get("sources"):
        lines.append("    (none recorded)")
    lines.append("  params:")
    lines += ["    " + line for line in json.dumps(m.get("params") or {}, indent=2, sort_keys=True).splitlines()]
    lines.append("  columns:")
    lines += [f"    {c['name']}: {c['type']}" for c in m["columns"]]
    return "\n".join(lines)
