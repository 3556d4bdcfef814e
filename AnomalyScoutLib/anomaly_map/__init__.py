"""The learned anomaly map (issue 16): a small discriminative head on [slice, reconstruction, position].

- :mod:`.perlin`: Perlin noise and irregular regions;
- :mod:`.synthesis`: generic synthetic anomalies made from normal slices (never the phantom's inserters);
- :mod:`.head`: the U-Net head, its settings, map and top-k slice score;
- :mod:`.data`: normal training slices with body masks and volume indices;
- :mod:`.training`: the training loop (``anomalyscout train-head``) and attaching a head to a model.

A model file may carry a head (``head.*`` tensors, ``metadata["head"]``); the engine then writes
``anomaly_map.nrrd`` and scores slices with the head. Nothing is imported here, so that the model file can
import the head without the training code.
"""

from __future__ import annotations

__all__: list[str] = []
