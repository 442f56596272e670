"""``mmray view``: the slide viewer (see :mod:`mmray.report.viewer`)."""

from __future__ import annotations

import argparse


def setup(sub) -> None:
    p = sub.add_parser("view", help="serve the slide viewer: Deep Zoom slides with switchable overlays",
                       description="Serve a web page with the store's slides (Deep Zoom through openslide) and "
                                   "overlays: tissue, tumour probability, nucleus density, MIL attention, HEEC "
                                   "extremum locations; patient and slide pickers; each overlay exports as QuPath "
                                   "GeoJSON. Slide files are looked up on the server; the page sees store ids only.")
    p.add_argument("--store", default=None, help="feature store (local path or s3://; default: --env's store)")
    p.add_argument("--cohort", default=None, help="cohort.yaml: finds the slide files of a pseudonymised store "
                                                 "(with MMRAY_PSEUDONYM_KEY set, as at ingest)")
    p.add_argument("--train-run", default=None, help="train run whose attention / HEEC importances to show "
                                                    "(default: the newest)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0 picks a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from mmray.report.viewer import viewer_data, viewer_server

    if not args.store:
        print("mmray view: error: give --store STORE (or --env NAME whose environment names a store)")
        return 2
    data = viewer_data(args.store, cohort=args.cohort, train_run=args.train_run)
    n = len(data.slides())
    with viewer_server(data, host=args.host or "127.0.0.1", port=8000 if args.port is None else args.port) as (_, url):
        readable = sum(1 for s in data.slides()["slide_id"] if s in data.uris)
        print(f"mmray view: {n} slide(s), {readable} with a readable file; overlays "
              f"{[k for k, v in data.overlays().items() if v]}; open {url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
