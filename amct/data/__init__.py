"""Calibration and evaluation data: the loader protocol and the file readers.

Library users either pass any iterable of ``{input name: float32 NCHW array}``
dicts to the toolkit, or build a ``Dataset``::

    from amct.data import open_dataset, Preprocess, BatchLoader
    ds = open_dataset(["calib_images/"], {"data": (3, 224, 224)},
                      preprocess=Preprocess(resize=(256, 256), crop=(224, 224),
                                            mean=(104, 117, 123)))
    for batch in ds.batches(16):          # {"data": (16, 3, 224, 224) float32}
        ...
"""
from amct.data.dataset import ArrayDataset, ArraySource, Batch, BatchLoader, Dataset, Source
from amct.data.images import ImageSource, list_images, read_labels_file
from amct.data.open import open_dataset, open_source, parse_data_specs, read_labels
from amct.data.preprocess import Preprocess, load_mean
from amct.data.tensors import load_bin, load_csv, load_idx, load_npy, load_npz

__all__ = ["ArrayDataset", "ArraySource", "Batch", "BatchLoader", "Dataset", "Source", "ImageSource",
           "list_images", "read_labels_file", "open_dataset", "open_source", "parse_data_specs",
           "read_labels", "Preprocess", "load_mean", "load_bin", "load_csv", "load_idx", "load_npy",
           "load_npz"]
