"""Runs a killed job left RUNNING are closed (KILLED, tagged) by the job that redoes them; nothing else is."""

from __future__ import annotations

from mlflow import MlflowClient

from mmray.registry.abandoned import REASON, close_abandoned


def test_running_runs_that_match_and_their_children_are_marked_killed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("mmray-train", artifact_location=str(tmp_path / "artifacts"))
    left = client.create_run(exp, run_name="train-abc", tags={"mmray.kind": "train"})  # the killed job's
    child = client.create_run(exp, run_name="single/clinical", tags={"mlflow.parentRunId": left.info.run_id})
    done = client.create_run(exp, run_name="train-abc", tags={"mmray.kind": "train"})
    client.set_terminated(done.info.run_id)
    other = client.create_run(exp, run_name="train-def", tags={"mmray.kind": "train"})

    match = "attributes.run_name = 'train-abc' and tags.`mmray.kind` = 'train'"
    assert close_abandoned(client, [exp], match=match) == 2
    statuses = [client.get_run(r.info.run_id).info.status for r in (left, child, done, other)]
    assert statuses == ["KILLED", "KILLED", "FINISHED", "RUNNING"]
    assert client.get_run(left.info.run_id).data.tags["mmray.abandoned"] == REASON
    assert close_abandoned(client, [exp], match=match) == 0  # nothing left to close
    assert close_abandoned(client, [exp], match="attributes.run_name = 'it''s'") == 0  # bad filter: logged, no error
