"""Contrastive fine-tuning of open_clip models on image–report pairs.

- :mod:`~cxrclip.training.recipe`: the ``train`` params section as a validated :class:`TrainRecipe`;
- :mod:`~cxrclip.training.data`: pairs from the uint8 cache, epoch orders, on-device augmentation;
- :mod:`~cxrclip.training.loss`: open_clip's ``ClipLoss`` plus optional false-negative masking;
- :mod:`~cxrclip.training.freeze`: projections first, then tower unlocking (open_clip lock options);
- :mod:`~cxrclip.training.schedule`: warmup + constant/cosine learning rate;
- :mod:`~cxrclip.training.checkpoint`: atomic, ``weights_only``-loadable checkpoints, safetensors export;
- :mod:`~cxrclip.training.distributed`: torchrun / DDP context;
- :mod:`~cxrclip.training.validation`: per-epoch metrics through the evaluation code;
- :mod:`~cxrclip.training.tracking`: MLflow run of a fine-tuning;
- :mod:`~cxrclip.training.loop`: :func:`~cxrclip.training.loop.fit`, the trainer;
- :mod:`~cxrclip.training.toydata`: generated pairs and a micro model for tests and benchmarks.
"""
