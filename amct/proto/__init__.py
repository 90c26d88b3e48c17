"""The project's protobuf schema (caffe.proto with fork and Ascend extensions)."""
from amct.proto import caffe_pb2  # noqa: F401
