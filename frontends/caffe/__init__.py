"""Caffe frontend: prototxt/caffemodel <-> ``amct.ir.Graph``."""
from amct.frontends.caffe.loader import load_binary_net, load_caffe, parse_prototxt, read_caffemodel
from amct.frontends.caffe.writer import prototxt_text, save_caffe, to_netparameter, write_caffemodel, write_prototxt

__all__ = ["load_caffe", "save_caffe", "parse_prototxt", "read_caffemodel", "load_binary_net",
           "write_prototxt", "write_caffemodel", "to_netparameter", "prototxt_text"]
