"""Compatibility name: ``import amct_caffe as amct`` as in Huawei's AMCT for Caffe."""
from amct import *  # noqa: F401,F403
from amct import __all__  # noqa: F401
