"""Data loaders: exact arrays after each preprocessing option, formats, and bad files."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from amct.data import ArrayDataset, BatchLoader, Preprocess, open_dataset
from amct.errors import DataError
from amct.proto import caffe_pb2

# A 4x6 RGB image whose every pixel/channel is distinct: value = 40*c + 6*y + x.
H, W = 4, 6
HWC = (np.arange(3)[None, None, :] * 40 + np.arange(H)[:, None, None] * 6
       + np.arange(W)[None, :, None]).astype(np.uint8)
CHW_RGB = HWC.transpose(2, 0, 1).astype(np.float32)


@pytest.fixture
def img_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(HWC, "RGB").save(d / "b.png")
    Image.fromarray(255 - HWC, "RGB").save(d / "a.png")
    (d / "notes.txt").write_text("not an image")
    return d


def load_one(path, shape, **pre):
    ds = open_dataset([str(path)], {"data": shape}, preprocess=Preprocess(**pre))
    return ds.load(0, len(ds))["data"]


def test_default_is_bgr_and_sorted(img_dir):
    x = load_one(img_dir, (3, H, W))
    assert x.shape == (2, 3, H, W) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], (255 - CHW_RGB)[::-1])     # a.png first, BGR
    np.testing.assert_array_equal(x[1], CHW_RGB[::-1])


def test_rgb_mean_scale(img_dir):
    x = load_one(img_dir / "b.png", (3, H, W), rgb=True, mean=(10, 20, 30), scale=0.5)
    np.testing.assert_array_equal(x[0], (CHW_RGB - np.array([10, 20, 30], np.float32)[:, None, None]) * 0.5)


def test_single_mean_value_applies_to_all_channels(img_dir):
    x = load_one(img_dir / "b.png", (3, H, W), rgb=True, mean=(127.5,), scale=0.0078125)
    np.testing.assert_array_equal(x[0], (CHW_RGB - 127.5) * 0.0078125)


def test_center_crop(img_dir):
    x = load_one(img_dir / "b.png", (3, 2, 4), rgb=True, crop=(2, 4))
    np.testing.assert_array_equal(x[0], CHW_RGB[:, 1:3, 1:5])


def test_crop_odd_margin_takes_floor_offset(img_dir):
    x = load_one(img_dir / "b.png", (3, 3, 3), rgb=True, crop=(3, 3))
    np.testing.assert_array_equal(x[0], CHW_RGB[:, 0:3, 1:4])


def test_transpose_hw(img_dir):
    x = load_one(img_dir / "b.png", (3, W, H), rgb=True, transpose_hw=True)
    np.testing.assert_array_equal(x[0], CHW_RGB.transpose(0, 2, 1))


def test_resize_constant_image(tmp_path):
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8), "RGB").save(tmp_path / "c.png")
    x = load_one(tmp_path / "c.png", (3, 5, 3), resize=(5, 3))
    assert x.shape == (1, 3, 5, 3)
    np.testing.assert_array_equal(x, 7.0)


def test_image_resized_to_net_size_by_default(tmp_path):
    Image.fromarray(np.full((9, 9, 3), 3, np.uint8), "RGB").save(tmp_path / "c.png")
    x = load_one(tmp_path / "c.png", (3, 4, 5))
    assert x.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(x, 3.0)


def test_grayscale_for_one_channel_net(tmp_path):
    g = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB").save(tmp_path / "rgb_gray.png")
    x = load_one(tmp_path, (1, 4, 6), scale=0.5)
    for i in range(2):
        np.testing.assert_array_equal(x[i, 0], g * 0.5)


def test_mean_file_binaryproto_and_npy(img_dir, tmp_path):
    mean = np.random.default_rng(0).uniform(0, 50, (1, 3, H, W)).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(mean.shape)
    blob.data.extend(mean.reshape(-1).tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    x = load_one(img_dir / "b.png", (3, H, W), rgb=True, mean_file=str(tmp_path / "mean.binaryproto"))
    np.testing.assert_array_equal(x[0], CHW_RGB - mean[0])
    # A larger mean image is center-cropped like the data; a (C,) .npy is per channel.
    x = load_one(img_dir / "b.png", (3, 2, 4), rgb=True, crop=(2, 4),
                 mean_file=str(tmp_path / "mean.binaryproto"))
    np.testing.assert_array_equal(x[0], CHW_RGB[:, 1:3, 1:5] - mean[0, :, 1:3, 1:5])
    np.save(tmp_path / "m.npy", np.array([1, 2, 3], np.float32))
    x = load_one(img_dir / "b.png", (3, H, W), mean_file=str(tmp_path / "m.npy"))
    np.testing.assert_array_equal(x[0], CHW_RGB[::-1] - np.array([1, 2, 3], np.float32)[:, None, None])


def test_npy_npz_bin(tmp_path):
    a = np.random.default_rng(1).normal(size=(5, 2, 3, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(load_one(tmp_path / "a.npy", (2, 3, 3)), a)
    np.savez(tmp_path / "a.npz", data=a, label=np.arange(5))
    ds = open_dataset([str(tmp_path / "a.npz")], {"data": (2, 3, 3)})
    np.testing.assert_array_equal(ds.labels, np.arange(5))
    a.astype(np.float64).tofile(tmp_path / "a.bin")
    ds = open_dataset([str(tmp_path / "a.bin")], {"data": (2, 3, 3)}, data_type="float64")
    np.testing.assert_array_equal(ds.load(0, 5)["data"], a)
    # A folder of .bin files is concatenated in name order.
    d = tmp_path / "bins"
    d.mkdir()
    a[3:].tofile(d / "1.bin")
    a[:3].tofile(d / "0.bin")
    np.testing.assert_array_equal(load_one(d, (2, 3, 3)), a)


def _write_idx(path, arr):
    head = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def test_idx_pair_and_preprocessing(tmp_path):
    imgs = np.random.default_rng(2).integers(0, 256, (7, 4, 4)).astype(np.uint8)
    labels = np.arange(7) % 3
    _write_idx(tmp_path / "x-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "x-labels-idx1-ubyte.gz", labels)
    ds = open_dataset([str(tmp_path / "x-images-idx3-ubyte.gz")], {"data": (1, 4, 4)},
                      preprocess=Preprocess(scale=1 / 256))
    np.testing.assert_array_equal(ds.labels, labels)
    np.testing.assert_array_equal(ds.load(0, 7)["data"][:, 0], imgs.astype(np.float32) / 256)


def test_csv_label_last_and_header_label_first(tmp_path):
    px = np.arange(12).reshape(3, 4)
    rows = "\n".join(",".join(map(str, list(r) + [i])) for i, r in enumerate(px))
    with gzip.open(tmp_path / "d.csv.gz", "wt") as f:
        f.write(rows + "\n")
    ds = open_dataset([str(tmp_path / "d.csv.gz")], {"data": (1, 2, 2)})
    np.testing.assert_array_equal(ds.labels, [0, 1, 2])
    np.testing.assert_array_equal(ds.load(0, 3)["data"].reshape(3, 4), px)
    (tmp_path / "k.csv").write_text("label,p0,p1,p2,p3\n" + "\n".join(
        ",".join(map(str, [9 - i] + list(r))) for i, r in enumerate(px)))
    ds = open_dataset([str(tmp_path / "k.csv")], {"data": (1, 2, 2)})
    np.testing.assert_array_equal(ds.labels, [9, 8, 7])
    np.testing.assert_array_equal(ds.load(0, 3)["data"].reshape(3, 4), px)


def test_several_inputs(tmp_path):
    a, b = np.ones((3, 2), np.float32), np.zeros((3, 1, 2, 2), np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    shapes = {"a": (2,), "b": (1, 2, 2)}
    ds = open_dataset([f"b={tmp_path / 'b.npy'}", f"a={tmp_path / 'a.npy'}"], shapes)
    batch = next(ds.batches(2))
    assert batch["a"].shape == (2, 2) and batch["b"].shape == (2, 1, 2, 2)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    ds = open_dataset([str(tmp_path / "ab.npz")], shapes)
    assert len(ds) == 3
    with pytest.raises(DataError, match="no --data for input"):
        open_dataset([f"a={tmp_path / 'a.npy'}"], shapes)


def test_labels_file_for_image_folder(img_dir, tmp_path):
    (tmp_path / "labels.txt").write_text("# name label\nb.png 4\na.png 2\n")
    ds = open_dataset([str(img_dir)], {"data": (3, H, W)}, labels=str(tmp_path / "labels.txt"))
    np.testing.assert_array_equal(ds.labels, [2, 4])
    (tmp_path / "short.txt").write_text("a.png 2\n")
    with pytest.raises(DataError, match=r"short\.txt: no label for image .*b\.png"):
        open_dataset([str(img_dir)], {"data": (3, H, W)}, labels=str(tmp_path / "short.txt"))


def test_batches_and_loader():
    ds = ArrayDataset(np.arange(10, dtype=np.float32).reshape(10, 1), labels=np.arange(10))
    sizes = [len(b["data"]) for b in ds.batches(4)]
    assert sizes == [4, 4, 2]
    loader = BatchLoader(ds, 4, batch_num=2)
    assert len(loader) == 2 and loader.samples == 8
    got = np.concatenate([b["data"] for b in loader])
    np.testing.assert_array_equal(got[:, 0], np.arange(8))
    labs = [lab.tolist() for _, lab in ds.labelled_batches(6)]
    assert labs == [list(range(6)), list(range(6, 10))]


@pytest.mark.parametrize("make, shape, pattern", [
    (lambda p: (p / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg"), (3, 2, 2), r"bad\.jpg"),
    (lambda p: np.save(p / "w.npy", np.zeros((2, 3, 5, 5), np.float32)), (3, 4, 4), r"w\.npy.*does not fit"),
    (lambda p: (p / "r.bin").write_bytes(b"\0" * 10), (1, 2, 2), r"r\.bin: 10 bytes"),
    (lambda p: (p / "i-images-idx3-ubyte").write_bytes(b"\1\2\3\4"), (1, 2, 2), r"i-images-idx3-ubyte: not an IDX"),
    (lambda p: (p / "c.csv").write_text("1,2,3\n"), (1, 2, 2), r"c\.csv: rows have 3 values"),
    (lambda p: (p / "x.dat").write_text("?"), (1, 2, 2), r"x\.dat: unknown data format"),
])
def test_bad_files_name_the_file(tmp_path, make, shape, pattern):
    make(tmp_path)
    target = next(p for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=pattern):
        ds = open_dataset([str(target)], {"data": shape})
        ds.load(0, len(ds))


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: folder holds no images"):
        open_dataset([str(tmp_path / "empty")], {"data": (3, 2, 2)})
    with pytest.raises(DataError, match=r"nope: no such file"):
        open_dataset([str(tmp_path / "nope")], {"data": (3, 2, 2)})


def test_bad_image_in_folder_named_when_loaded(img_dir):
    (img_dir / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = open_dataset([str(img_dir)], {"data": (3, H, W)})
    ds.load(0, 2)
    with pytest.raises(DataError, match=r"c\.png"):
        ds.load(2, 3)


def test_preprocessed_size_mismatch_is_reported(img_dir):
    with pytest.raises(DataError, match=r"b\.png: preprocessed size is 2x4 but the network input takes 3x3"):
        load_one(img_dir / "b.png", (3, 3, 3), crop=(2, 4))
