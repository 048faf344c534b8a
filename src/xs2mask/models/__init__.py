"""Model specs, the model registry and the per-process model loader.

Examples
--------
>>> import xs2mask
>>> xs2mask.models.available()  # doctest: +SKIP
['s2cloudless', 'ukis-csmask-4b-l1c', 'ukis-csmask-4b-l2a', 'ukis-csmask-6b-l1c', 'ukis-csmask-6b-l2a']
>>> xs2mask.models.get("ukis-csmask-6b-l2a").bands
('B02', 'B03', 'B04', 'B08', 'B11', 'B12')
"""

from .backends import Backend, Runtime, clear_cache, get_backend, load, load_counts, register_backend
from .registry import available, get, missing_modules, register, registered, resolve_default
from .spec import ModelSpec, Weights, sha256_file

__all__ = [
    "Backend",
    "ModelSpec",
    "Runtime",
    "Weights",
    "available",
    "clear_cache",
    "get",
    "get_backend",
    "load",
    "load_counts",
    "missing_modules",
    "register",
    "register_backend",
    "registered",
    "resolve_default",
    "sha256_file",
]
