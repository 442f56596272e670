"""Report sections from the pipeline run itself (``extra``): per-stage timings, and the served predictions."""

from __future__ import annotations

import html
import json

import numpy as np

from mmray.report import render
from mmray.report.document import InputMissing, figure, para

STATUS_COLOURS = {"ran": "#2e7d32", "skipped": "#9e9e9e", "failed": "#c62828"}


def _timing_rows(timings) -> list[dict]:
    rows = []
    for t in timings:
        if isinstance(t, dict):
            stage, seconds, status, detail = (t.get(k) for k in ("stage", "seconds", "status", "detail"))
        else:
            stage, seconds, status, detail = (list(t) + [None] * 4)[:4]
        rows.append({"stage": str(stage), "seconds": float(seconds or 0.0), "status": str(status or ""),
                     "detail": "" if detail is None else str(detail)})
    return rows


def run_section(extra: dict) -> list[str]:
    rows = _timing_rows(extra.get("timings") or [])
    if not rows:
        raise InputMissing("the pipeline passed no stage timings", "mmray demo")
    total = sum(r["seconds"] for r in rows)
    fig = render.new_figure(6.5, 0.38 * len(rows) + 1.0)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))
    ax.barh(y, [r["seconds"] for r in rows], color=[STATUS_COLOURS.get(r["status"], "#1565c0") for r in rows])
    ax.set_yticks(y, labels=[f"{r['stage']} ({r['status']})" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    counts = {s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)}
    body = [para(f"{len(rows)} stage(s) in {total:.1f} s: "
                 + ", ".join(f"{n} {html.escape(s)}" for s, n in counts.items()) + "."),
            render.table(rows, [("stage", "stage"), ("status", "status"), ("seconds", "seconds"),
                                ("detail", "detail")], mark=lambda r: r["status"] == "failed"),
            figure(fig, alt="seconds per stage", caption="Wall time per stage; green ran, grey skipped "
                                                         "(the store already held its output), red failed.")]
    config = extra.get("pipeline_config")
    if config:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        body.append(f"<details><summary>Pipeline configuration</summary><pre>{html.escape(text)}</pre></details>")
    return body


def serving_section(extra: dict) -> list[str]:
    serve = extra.get("serve")
    if not serve:
        raise InputMissing("the pipeline's serve stage did not run (no served predictions)",
                           "mmray demo (or a pipeline whose stages include serve)")
    queries = serve.get("queries") or []
    rows = [{"model": q.get("model"), "version": q.get("version"), "status": q.get("status"),
             "latency_ms": q.get("latency_ms"),
             "risk": ", ".join(f"{float(v):.3f}" for v in (q.get("risk") or [])) or q.get("error", "")}
            for q in queries]
    ok = [r for r in rows if r["status"] == 200]
    lat = np.asarray([float(r["latency_ms"]) for r in ok if r["latency_ms"] is not None])
    models = serve.get("models") or []
    latency = (f" Latency of the successful requests: median {np.median(lat):.1f} ms, max {lat.max():.1f} ms."
               if lat.size else "")
    body = [para(f"Endpoint <code>{html.escape(str(serve.get('url', '')))}</code> served {len(models)} model(s); "
                 f"<b>{len(ok)}</b> of {len(rows)} prediction request(s) answered 200, "
                 f"{int(serve.get('errors') or 0)} error(s).{latency}")]
    if models:
        body.append("<p>Models: " + ", ".join(f"<code>{html.escape(str(m))}</code>" for m in models) + "</p>")
    body.append(render.table(rows, [("model", "model"), ("version", "version"), ("status", "HTTP status"),
                                    ("latency_ms", "latency (ms)"), ("risk", "predicted risk or error")],
                             mark=lambda r: r["status"] != 200))
    return body
