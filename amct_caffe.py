"""Compatibility name: ``import amct_caffe as amct`` as in Huawei's AMCT for Caffe.

Everything ``amct`` offers (functions, classes and submodules such as
``amct_caffe.runtime``) is reachable under this name too.
"""
import amct as _amct
from amct import *  # noqa: F401,F403
from amct import __all__, __version__  # noqa: F401


def __getattr__(name: str):
    return getattr(_amct, name)


def __dir__():
    return dir(_amct)
