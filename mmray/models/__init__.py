"""Model definitions: plain PyTorch / LightGBM / PyG, no Ray imports.

* :mod:`~mmray.models.batch`: the ``Batch`` contract and ``collate`` (variable-size tile bags, modality masks);
* :mod:`~mmray.models.losses`: Cox (Breslow/Efron), discrete-time NLL with ``TimeBins``, subtype cross-entropy;
* :mod:`~mmray.models.registry`: ``build_model(name, ...)`` and ``describe()`` for tuners;
* models: ``fusion`` (single, early, late, attention), ``porpoise``, ``hetero_gnn``, ``heec`` (LightGBM,
  with the Cox objective in ``lgbm_cox``).

Nothing is imported here, so ``import mmray.models.lgbm_cox`` does not pull in torch.
"""
