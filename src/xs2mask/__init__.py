"""xs2mask: cloud and cloud-shadow masks for Sentinel-2 data cubes.

Examples
--------
>>> import xs2mask
>>> cube = xs2mask.data.demo_scene()
>>> ds = cube.s2mask.predict()          # or xs2mask.predict(cube)
>>> sorted(ds.data_vars)
['mask']
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xs2mask")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

from . import accessor, analysis, classes, data, export, models, plotting, radiometry, stac, store

# The deprecated name of export: xs2mask.io.write_geotiff still resolves (with a DeprecationWarning).
from . import io as io
from .analysis import apply_mask, clear_fraction, composite
from .evaluation import ClassScores, Scores, combine, evaluate
from .exceptions import (
    BandError,
    DependencyError,
    DeviceError,
    InputError,
    InputWarning,
    ModelNotFoundError,
    OptionError,
    RadiometryWarning,
    ReadError,
    ReadWarning,
    StacError,
    StoreError,
    WeightsError,
    XS2MaskError,
)
from .inference import predict
from .store import open_masks, to_zarr

__all__ = [
    "BandError",
    "ClassScores",
    "DependencyError",
    "DeviceError",
    "InputError",
    "InputWarning",
    "ModelNotFoundError",
    "OptionError",
    "RadiometryWarning",
    "ReadError",
    "ReadWarning",
    "Scores",
    "StacError",
    "StoreError",
    "WeightsError",
    "XS2MaskError",
    "__version__",
    "accessor",
    "analysis",
    "apply_mask",
    "classes",
    "clear_fraction",
    "combine",
    "composite",
    "data",
    "evaluate",
    "export",
    "models",
    "open_masks",
    "plotting",
    "predict",
    "radiometry",
    "stac",
    "store",
    "to_zarr",
]
