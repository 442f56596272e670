"""The slide-embedding cost model of docs/scale.md, computed from the benchmarks' JSON.

    python benchmarks/cost_model.py --wsi wsi_scale.json [--gpu-tiles tiles.json] [--slides 10000] [--hours 24]
        [--json cost.json]

Inputs (measured):
* ``--wsi`` (benchmarks/bench_wsi_scale.py): tiles + regions per 100,000 x 80,000 px slide at 0.5 um/px and
  one core's rates: OpenSlide reads of 256-px tiles (512-px level-0 reads, resized) and CPU embeddings of
  resnet50_trunc at 224 px;
* ``--gpu-tiles`` (benchmarks/bench_tiles.py on a GPU, e.g. from benchmarks/gpu_check.sh): the encoder-alone
  tiles/s of resnet50_trunc on that GPU, and the pipeline's fraction of it.

Assumptions (flags; each printed with the result): the A10G's resnet50_trunc rate when no GPU figure is
given, the fraction of a node's vCPUs that do useful reading (the rest: Ray, the object store, the
driver's share), EC2 on-demand prices of cluster/aws.yaml's node types (us-east-1 list prices; spot is
typically 60-70% less), and the tissue tiles per slide (the synthetic slide's, and a denser 30,000).

Model: reading is CPU work on ``cpu_ingest`` nodes (c6i.4xlarge, 16 vCPU), encoding GPU work on
``gpu_encode`` nodes (g5.2xlarge, one A10G), both streaming (Ray Data), so a cluster runs at the slower of
the two; the head (m6i.2xlarge) runs for the whole job.  A CPU-only cluster reads and embeds on the same
cores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

PRICES_PER_H = {"m6i.2xlarge": 0.384, "g5.2xlarge": 1.212, "c6i.4xlarge": 0.68}  # us-east-1 on-demand, USD
CPU_NODE_VCPU = 16
GPU_NODE_VCPU = 8
ASSUMED_A10G_TILES_PER_S = 1500.0  # resnet50_trunc, 224 px, bf16 + channels_last; replace with gpu_check.sh's figure
USEFUL_CPU_FRACTION = 0.8


def model(*, tiles_per_slide: float, read_per_core: float, embed_per_core: float, gpu_tiles_per_s: float,
          slides: int, hours: float, useful: float = USEFUL_CPU_FRACTION) -> dict:
    cpu_read = read_per_core * CPU_NODE_VCPU * useful  # tiles/s one cpu_ingest node reads
    cpu_both = CPU_NODE_VCPU * useful / (1 / read_per_core + 1 / embed_per_core)  # read + embed on CPU only
    total = tiles_per_slide * slides
    gpu_nodes = math.ceil(total / (gpu_tiles_per_s * hours * 3600))
    feed = math.ceil(gpu_nodes * gpu_tiles_per_s / cpu_read)  # cpu_ingest nodes that keep the GPUs busy
    rate = min(gpu_nodes * gpu_tiles_per_s, feed * cpu_read)
    wall_h = total / rate / 3600
    gpu_cost = wall_h * (gpu_nodes * PRICES_PER_H["g5.2xlarge"] + feed * PRICES_PER_H["c6i.4xlarge"]
                         + PRICES_PER_H["m6i.2xlarge"])
    cpu_nodes = math.ceil(total / (cpu_both * hours * 3600))
    cpu_wall_h = total / (cpu_nodes * cpu_both) / 3600
    cpu_cost = cpu_wall_h * (cpu_nodes * PRICES_PER_H["c6i.4xlarge"] + PRICES_PER_H["m6i.2xlarge"])
    return {
        "tiles_per_slide": round(tiles_per_slide), "slides": slides, "target_hours": hours,
        "slides_per_hour": {"gpu_node_encode": round(3600 * gpu_tiles_per_s / tiles_per_slide, 1),
                            "gpu_node_reading_itself": round(3600 * min(gpu_tiles_per_s, read_per_core * (
                                GPU_NODE_VCPU - 1) * useful) / tiles_per_slide, 1),
                            "cpu_node_read_only": round(3600 * cpu_read / tiles_per_slide, 1),
                            "cpu_node_read_and_embed": round(3600 * cpu_both / tiles_per_slide, 2)},
        "cpu_nodes_to_feed_one_gpu": round(gpu_tiles_per_s / cpu_read, 2),
        "gpu_cluster": {"gpu_encode_nodes": gpu_nodes, "cpu_ingest_nodes": feed, "head": 1,
                        "wall_hours": round(wall_h, 1), "cost_usd_on_demand": round(gpu_cost),
                        "cost_usd_per_slide": round(gpu_cost / slides, 3)},
        "cpu_only_cluster": {"cpu_ingest_nodes": cpu_nodes, "head": 1, "wall_hours": round(cpu_wall_h, 1),
                             "cost_usd_on_demand": round(cpu_cost), "cost_usd_per_slide": round(cpu_cost / slides, 3)},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wsi", required=True, help="bench_wsi_scale.py JSON")
    p.add_argument("--gpu-tiles", default=None, help="bench_tiles.py JSON from a GPU machine")
    p.add_argument("--slides", type=int, default=10_000)
    p.add_argument("--hours", type=float, default=24.0, help="target wall-clock time of the whole job")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    wsi = json.loads(Path(args.wsi).read_text())
    rates, largest = wsi["per_core"], wsi["sizes"][-1]
    tiles = largest["mmray"]["tiles"] + largest["mmray"]["regions"]
    read = rates["read_tiles_per_cpu_s"]  # per CPU-second: one dedicated core, whatever the machine's load
    embed = rates["embed_resnet50_trunc_224px_tiles_per_cpu_s"]
    assumptions = {"prices_usd_per_hour_on_demand_us_east_1": PRICES_PER_H, "useful_cpu_fraction": USEFUL_CPU_FRACTION,
                   "cpu_node_vcpu": CPU_NODE_VCPU, "measured_on": {"loadavg": rates.get("loadavg"),
                                                                   "machine": wsi.get("machine")}}
    if args.gpu_tiles:
        gpu = json.loads(Path(args.gpu_tiles).read_text())
        gpu_rate = gpu["encoder_alone"]["tiles_per_s"]
        assumptions["gpu"] = {"measured": True, "name": gpu.get("machine", {}).get("gpu"), "tiles_per_s": gpu_rate}
    else:
        gpu_rate = ASSUMED_A10G_TILES_PER_S
        assumptions["gpu"] = {"measured": False, "tiles_per_s": gpu_rate,
                              "why": "no GPU was lent; run benchmarks/gpu_check.sh and pass --gpu-tiles"}
    out = {"inputs": {"read_tiles_per_s_one_core": read,
                      "embed_tiles_per_s_one_core_resnet50_trunc": embed, "gpu_tiles_per_s": gpu_rate,
                      "tiles_per_100k_slide": tiles},
           "assumptions": assumptions,
           "measured_slide": model(tiles_per_slide=tiles, read_per_core=read,
                                   embed_per_core=embed, gpu_tiles_per_s=gpu_rate, slides=args.slides,
                                   hours=args.hours),
           "dense_slide_30k_tiles": model(tiles_per_slide=30_000, read_per_core=read,
                                          embed_per_core=embed, gpu_tiles_per_s=gpu_rate, slides=args.slides,
                                          hours=args.hours)}
    text = json.dumps(out, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
