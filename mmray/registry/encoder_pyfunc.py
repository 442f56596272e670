"""A registered tile encoder as an MLflow pyfunc model (uint8 tiles -> embeddings)."""

from __future__ import annotations

import warnings

import mlflow
import numpy as np

# MLflow warns at class creation that predict has no type hints it validates: tiles are plain arrays.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    class EncoderPyfunc(mlflow.pyfunc.PythonModel):
        """A registered tile encoder: ``predict(uint8 [N, H, W, 3])`` -> float32 ``[N, dim]`` embeddings."""

        def __init__(self, *, name: str, input_px: int):
            self.name, self.input_px = name, input_px

        def load_context(self, context):
            from mmray.features.encoders import EncoderSpec, build_model

            self._model, self.dim, _ = build_model(EncoderSpec(name=self.name, weights=context.artifacts["encoder"],
                                                               input_px=self.input_px))

        def predict(self, context, model_input, params=None):
            import torch
            import torch.nn.functional as F

            from mmray.features.tile_pipeline import IMAGENET_MEAN, IMAGENET_STD

            x = torch.from_numpy(np.ascontiguousarray(np.asarray(model_input, dtype=np.uint8))).permute(0, 3, 1, 2)
            x = x.float() / 255.0
            if x.shape[-1] != self.input_px:
                x = F.interpolate(x, size=(self.input_px, self.input_px), mode="bilinear", antialias=True)
            x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            with torch.inference_mode():
                return self._model(x).float().numpy()
