"""DDP on GPUs: Ray Train's TorchTrainer with the NCCL backend fits a model (``-m gpu``; skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_nccl_fit_on_one_gpu(tmp_path):
    import ray
    from train_testdata import write_tiny_store

    from mmray.config import load_config
    from mmray.train.config import TrainJobConfig
    from mmray.train.cv import run_train

    ray.init(num_cpus=4, num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False)
    try:
        st, _ = write_tiny_store(tmp_path / "s", n=40, seed=2, tile_dim=8)
        rep = run_train(load_config(TrainJobConfig, None, [
            f"store={st.uri}", f"output={tmp_path}/out", "folds.n_folds=2", "train.executor=ray_train",
            "train.use_gpu=true", "train.workers=1", "train.max_epochs=3", "train.patience=3", "n_boot=0",
            "mlflow.enabled=false", "models=[{name: attention_fusion, sets: [both]}]",
            "modality_sets={both: [clinical, expression]}"]))
    finally:
        ray.shutdown()
    assert (rep.results["status"] == "ok").all(), rep.results["error"].tolist()
    assert rep.results["harrell_c"].between(0, 1).all()
