"""Exception classes of the toolkit.

Every failure the toolkit reports is an ``AmctError``.  Subclasses say which
stage failed; the message always names the file, the position (line/column for
text, byte offset for binary), the layer or the config key concerned, so a user
can find the offender without a traceback.
"""
from __future__ import annotations


class AmctError(Exception):
    """Base class of every error raised on purpose by the toolkit."""


class ModelFormatError(AmctError, ValueError):
    """A prototxt or caffemodel is syntactically or structurally malformed."""


class PrototxtSyntaxError(ModelFormatError):
    """The text model does not parse (message carries file:line:column)."""


class CaffemodelError(ModelFormatError):
    """The binary model is truncated or corrupt (message carries the byte offset)."""


class GraphError(AmctError, ValueError):
    """The network is not a well-formed graph (missing bottom, cycle, duplicates)."""


class MissingBottomError(GraphError):
    """A layer reads a blob that no earlier layer produces."""


class GraphCycleError(GraphError):
    """The layers' data flow contains a cycle."""


class DuplicateNameError(GraphError):
    """Two layers share a name, or two layers write the same new blob."""


class WeightsError(AmctError, ValueError):
    """Weights are missing, of the wrong count or shape, or not finite."""


class ShapeError(AmctError, ValueError):
    """Shape inference failed: incompatible input shapes or parameters."""


class UnsupportedLayerError(AmctError, NotImplementedError):
    """A layer type whose semantics are needed is not known to the toolkit."""


class ConfigError(AmctError, ValueError):
    """A quantization config (JSON or .cfg) is invalid."""


class RecordError(AmctError, ValueError):
    """A scale/offset record file is invalid or incomplete."""


class QuantizationError(AmctError, ValueError):
    """Quantization cannot proceed (e.g. an int32 bias overflow)."""


class CalibrationError(AmctError, RuntimeError):
    """Calibration did not complete or produced unusable statistics."""


class PassError(AmctError, RuntimeError):
    """A pass failed, was misconfigured, or broke a graph invariant."""


class DataError(AmctError, ValueError):
    """Calibration or evaluation data cannot be read or has the wrong shape."""


class OutputError(AmctError, OSError):
    """An output file cannot be written."""
