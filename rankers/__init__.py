"""CTR/CVR ranking on TorchRec embedding tables with interchangeable interaction backbones."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rankers")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"
