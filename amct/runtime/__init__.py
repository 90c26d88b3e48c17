"""The built-in Caffe runtime: runs any Caffe net on numpy.

Two faces over one executor (``amct.runtime.executor``):

* the functional API for library code: ``compile(graph) -> Program``,
  ``Program.run(inputs)``, ``Program.forward(start=, end=)``, observers;
  ``run(graph, inputs)`` for a one-off pass;
* a pycaffe-compatible module: ``import amct.runtime as caffe`` and use
  ``caffe.Net``, ``caffe.TEST``, ``caffe.set_mode_cpu()``, ``caffe.io`` ...

Custom layer types are registered with ``register_layer`` /
``register_function_layer`` (re-exported from ``amct.ir``).
"""
from __future__ import annotations

import logging

from amct import proto  # noqa: F401  (pycaffe scripts use caffe.proto.caffe_pb2)
from amct.ir.registry import LayerDef, register_function_layer, register_layer, unregister_layer
from amct.runtime import io  # noqa: F401  (caffe.io)
from amct.runtime.executor import (ExecutionError, Observer, Program, Step, capture_inputs, compile,
                                   run)
from amct.runtime.net import TEST, TRAIN, Blob, Net, UnsupportedPhaseError

import amct.proto.caffe_pb2  # noqa: E402,F401  (makes proto.caffe_pb2 an attribute)

log = logging.getLogger("amct.runtime")

__all__ = ["compile", "run", "Program", "Step", "Observer", "ExecutionError", "Net", "Blob",
           "TEST", "TRAIN", "set_mode_cpu", "set_mode_gpu", "set_device", "set_random_seed",
           "io", "register_layer", "register_function_layer", "unregister_layer", "LayerDef",
           "UnsupportedPhaseError", "capture_inputs"]


def set_mode_cpu() -> None:
    """The runtime always runs on the CPU; kept for pycaffe scripts."""


def set_mode_gpu() -> None:
    """There is no GPU path: warn and stay on the CPU."""
    log.warning("amct.runtime has no GPU mode; running on the CPU (numpy)")


def set_device(device_id: int) -> None:
    """Accepted and ignored (CPU only)."""
    log.debug("set_device(%s) ignored: the runtime runs on the CPU", device_id)


def set_random_seed(seed: int) -> None:
    """Accepted for pycaffe scripts; inference in TEST phase draws no random numbers."""
