"""MLflow runs a killed job left RUNNING, closed by the job that redoes their work.

A job SIGKILLed while logging (train, tune trials, register, signatures) leaves
its MLflow run RUNNING for ever: no process is left to end it, and the tracking
UI shows work in progress that will never finish. The rerun that redoes the
same work (found by the same deterministic run name, tune run tag or lineage
hash) marks those runs, and the runs nested under them, KILLED with an
``mmray.abandoned`` tag before it logs its own.

One job per run name at a time is the supported use (as for the store's
writers): a run that is really still going would be marked KILLED too, and
its own ``set_terminated`` would later mark it FINISHED again.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
REASON = "its job ended without finishing it (killed?); a later job redid the work"


def close_abandoned(client, experiment_ids: list[str], *, match: str) -> int:
    """Mark KILLED the RUNNING runs that MLflow search filter ``match`` selects, and their nested runs.

    ``client``: an ``mlflow.MlflowClient``. Returns how many runs were closed.
    """
    from mlflow.exceptions import MlflowException

    running = "attributes.status = 'RUNNING'"
    closed = 0
    try:
        todo = list(client.search_runs(experiment_ids, filter_string=f"{match} and {running}", max_results=1000))
        while todo:
            run = todo.pop()
            todo += client.search_runs(experiment_ids, max_results=1000, filter_string=(
                f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and {running}"))
            client.set_tag(run.info.run_id, "mmray.abandoned", REASON)
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    except MlflowException as e:  # tidying only: a name the filter cannot quote must not fail the job
        log.warning("MLflow: could not look for runs a killed job left RUNNING (%s): %s", match, e)
    if closed:
        log.warning("MLflow: %d run(s) a killed job left RUNNING (%s) marked KILLED", closed, match)
    return closed
