"""Cluster launcher YAMLs pass Ray's own autoscaler validation (EC2 can't be reached here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_config_passes_ray_validation(name):
    config = prepare_config(load(name))  # fills Ray's defaults for the provider, as `ray up` does
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]


def test_aws_node_types_match_what_the_pipeline_requests():
    config = load("aws.yaml")
    types = config["available_node_types"]
    assert types["head"]["resources"] == {}, "no pipeline work lands on the head"
    gpu, cpu = types["gpu_encode"], types["cpu_ingest"]
    assert gpu["min_workers"] == 0 and gpu["resources"] == {"wsi_gpu": 1}
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cpu["resources"]["ingest_cpu"] > 0
    assert config["idle_timeout_minutes"] > 0
    for t in ("gpu_encode", "cpu_ingest"):
        assert types[t]["node_config"]["IamInstanceProfile"]["Arn"].endswith("instance-profile/mmray-worker")
    assert any("make setup" in c for c in config["setup_commands"])


def test_validation_rejects_a_broken_config():
    config = prepare_config(load("aws.yaml"))
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_encode"]["resources"] = {"wsi_gpu": -1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(broken)


def test_worker_policy_is_least_privilege():
    policy = json.loads((CLUSTER / "iam" / "mmray-worker-policy.json").read_text())
    actions = {(s["Sid"], a) for s in policy["Statement"] for a in s["Action"]}
    cohort_writes = [a for sid, a in actions if "Cohort" in sid and a in ("s3:PutObject", "s3:DeleteObject")]
    assert not cohort_writes, "the cohort bucket is read-only"
    assert all("*" not in a for _, a in actions), "no wildcard actions"
    kms = next(s for s in policy["Statement"] if s["Sid"].startswith("UseStoreKms"))
    assert kms["Condition"]["StringEquals"]["kms:ViaService"].startswith("s3.")
