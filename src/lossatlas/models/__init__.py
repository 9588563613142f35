"""Models: the zoo (mlp, cnn1d, bncnn, resnet20/56/110, wrn, vgg9, densenet, linear, two_layer, logistic, gru,
lstm, vgg9_1d) and the ``--model SPEC`` loader for ``zoo:NAME[:key=value,...]``, ``path/to/file.py:function`` and
``package.module:function``.
"""

from __future__ import annotations

from lossatlas.models.loading import build_model
from lossatlas.models.zoo import ZOO, zoo_keys, zoo_names

__all__ = ["ZOO", "build_model", "zoo_keys", "zoo_names"]
