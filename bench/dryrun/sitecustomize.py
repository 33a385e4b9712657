"""Loaded by ``bench/gpu.sh --dry-run``: the device image has no ``mimeta`` (and no network), so
importing it on the GPU path must fail here too, loudly, instead of passing on a dev machine."""

import importlib.abc
import sys

MISSING_ON_DEVICE = ("mimeta",)


class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name.split(".")[0] in MISSING_ON_DEVICE:
            raise ModuleNotFoundError(f"{name} is not installed on the GPU device (dry run)")
        return None


sys.meta_path.insert(0, _Missing())
