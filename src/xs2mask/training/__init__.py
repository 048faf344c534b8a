"""Training xs2mask's own models on real Sentinel-2 pixels.

Submodules (import them directly; this package imports none of them):

* :mod:`~xs2mask.training.simulate` -- realistic clouds and cloud shadows, with exact labels, added to
  real clear reflectance;
* :mod:`~xs2mask.training.pseudo` -- pseudo-labels from a strong existing model on real cloudy scenes;
* :mod:`~xs2mask.training.data` -- training samples drawn from both, with augmentation;
* :mod:`~xs2mask.training.train` -- the training loop.
"""
