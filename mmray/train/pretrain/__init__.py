"""Self-supervised encoder pretraining on the cohort's own data (DINO; the HIPT 256 -> 4096 hierarchy).

Generic core (no assumption about the input's shape; reused for 3D CT crops):

* :mod:`mmray.models.dino` (head, multi-crop wrapper, loss with centring and temperatures, EMA, clipping,
  last-layer freeze) and :mod:`mmray.models.dino_backbones` (``cnn_small``, timm ViTs);
* :mod:`~mmray.train.pretrain.dino_config` (``DinoConfig``: every hyperparameter, HIPT defaults),
  :mod:`~mmray.train.pretrain.schedules` (cosine lr with warm-up, weight decay, teacher momentum),
  :mod:`~mmray.train.pretrain.loop` (``DinoTask``, the Ray Train loop with per-epoch checkpoints and resume,
  ``fit_dino``), :mod:`~mmray.train.pretrain.probe` (linear probe and k-NN scores of frozen embeddings).

2D tiles: :mod:`~mmray.train.pretrain.views2d` (batched multi-crop) and :mod:`~mmray.train.pretrain.tile_task`.
"""
