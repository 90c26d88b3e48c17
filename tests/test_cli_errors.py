"""Issue 7: bad inputs through the command line give one line on stderr and exit status 2.

``amct-caffe`` (``python -m amct``) prints ``amct-caffe: error: <message>``, a
single line naming the offending file/line/layer, and a traceback only with
``--debug``.  Most cases run ``amct.cli.main`` in-process (fast); the real
entry point runs once in a subprocess.
"""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from amct import cli
from conftest import DATA

M = str(DATA / "lenet/mnist_deploy.prototxt")
W = str(DATA / "lenet/lenet_iter_10000.caffemodel")
LENET = ["--model", M, "--weights", W]


def png(value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path):
    """Bad (and a few good) input files for the CLI cases, by name."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.png").write_bytes(png(10))
    (imgs / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good_imgs = tmp_path / "good_imgs"
    good_imgs.mkdir()
    for i in range(2):
        (good_imgs / f"{i}.png").write_bytes(png(40 * i))
    (tmp_path / "bad.json").write_text('{\n  "version": 1,\n  "batch_num": 0\n}\n')
    (tmp_path / "syntax.json").write_text('{\n  "version": 1\n  "batch_num": 2\n}\n')
    (tmp_path / "bad.cfg").write_text("batch_num: 1\ncommon_config { arq_quantize { channel_wise: maybe } }\n")
    (tmp_path / "bad_record.txt").write_text('record { key: "conv1"\n value { scale_d: 0.1 offset_d: 300 } }\n')
    (tmp_path / "syntax_record.txt").write_text('record { key: "conv1" value { scale_d: } }\n')
    (tmp_path / "record.txt").write_text('record { key: "conv1" value { scale_d: 0.01 offset_d: 0 } }\n')
    (tmp_path / "a_file").write_text("not a directory")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 28, 28), np.float32))
    (tmp_path / "trunc.caffemodel").write_bytes(open(W, "rb").read()[:5000])
    return tmp_path


def fmt(args: list[str], d) -> list[str]:
    return [a.format(d=d) for a in args]


CALIBRATE = ["calibrate", *LENET, "--save-path", "{d}/out/lenet", "--no-report"]

# (id, argv, fragments of the one error line)
CASES = [
    ("model-missing", ["calibrate", "--model", "{d}/nope.prototxt", "--weights", W,
                       "--data", "{d}/good_imgs", "--save-path", "{d}/out/x"],
     ["{d}/nope.prototxt", "no such file"]),
    ("weights-truncated", ["inspect", "--model", M, "--weights", "{d}/trunc.caffemodel"],
     ["{d}/trunc.caffemodel", "byte"]),
    ("config-bad-value", CALIBRATE + ["--data", "{d}/good_imgs", "--config", "{d}/bad.json"],
     ["{d}/bad.json", "batch_num", "positive integer"]),
    ("config-json-syntax", CALIBRATE + ["--data", "{d}/good_imgs", "--config", "{d}/syntax.json"],
     ["{d}/syntax.json:3:3:", "invalid JSON"]),
    ("config-cfg-syntax", CALIBRATE + ["--data", "{d}/good_imgs", "--config", "{d}/bad.cfg"],
     ["{d}/bad.cfg:2:", "channel_wise"]),
    ("image-undecodable", CALIBRATE + ["--data", "{d}/imgs"],
     ["{d}/imgs/b.png", "decode"]),
    ("data-wrong-shape", CALIBRATE + ["--data", "{d}/wrong.npy"],
     ["{d}/wrong.npy", "(4, 3, 28, 28)", "does not fit"]),
    ("record-bad-value", ["convert", *LENET, "--record", "{d}/bad_record.txt",
                          "--save-path", "{d}/out/lenet"],
     ["{d}/bad_record.txt", "record 'conv1'", "offset_d", "300"]),
    ("record-syntax", ["convert", *LENET, "--record", "{d}/syntax_record.txt",
                       "--save-path", "{d}/out/lenet"], ["{d}/syntax_record.txt:1:"]),
    ("save-path-under-file", ["convert", *LENET, "--record", "{d}/record.txt",
                              "--save-path", "{d}/a_file/lenet"],
     ["{d}/a_file/lenet_", "not a directory"]),
    ("skip-unknown-layer", CALIBRATE + ["--data", "{d}/good_imgs", "--skip-layers", "conv9"],
     ["skip_layers", "conv9"]),
]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("amct-caffe: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("cid, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_one_line_exit_2(files, capsys, monkeypatch, cid, argv, fragments):
    monkeypatch.chdir(files)
    assert cli.main(["-q", *fmt(argv, files)]) == 2
    cap = capsys.readouterr()
    line = one_error_line(cap.err)
    for frag in fragments:
        assert frag.format(d=files) in line, f"{cid}: {frag!r} not in {line!r}"
    assert not (files / "out").exists() or cid == "image-undecodable" or \
        not any(p.name.startswith("lenet_") and p.suffix != "" for p in (files / "out").iterdir())


def test_without_quiet_the_error_is_still_one_line(files, capsys, monkeypatch):
    """Progress logging may precede it; the error itself is one line, the last one."""
    monkeypatch.chdir(files)
    assert cli.main(fmt(CALIBRATE + ["--data", "{d}/imgs"], files)) == 2
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("amct-caffe:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert all(x[:2].isdigit() and " [" in x for x in err.strip().splitlines()[:-1]), err
    assert "Traceback" not in err


def test_debug_prints_the_traceback(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = fmt(["convert", *LENET, "--record", "{d}/bad_record.txt", "--save-path", "{d}/o/x"], files)
    assert cli.main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RecordError" in err
    assert err.strip().splitlines()[-1].startswith("amct-caffe: error: ")


def test_real_entry_point(files):
    """``python -m amct``: exit status 2 and the one line, from a fresh interpreter."""
    r = subprocess.run([sys.executable, "-m", "amct", "-q", "convert", *LENET, "--record",
                        str(files / "bad_record.txt"), "--save-path", str(files / "o" / "x")],
                       capture_output=True, text=True, timeout=120, cwd=files)
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert str(files / "bad_record.txt") in line and "offset_d" in line
    assert r.stdout == ""


BAD_FLAGS = [
    ["calibrate", *LENET, "--data", "d", "--save-path", "p", "--batch-num", "0"],
    ["calibrate", *LENET, "--data", "d", "--save-path", "p", "--resize", "3"],
    ["calibrate", *LENET, "--data", "d", "--save-path", "p", "--save-type", "int8"],
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=["batch-num-0", "resize-one-value", "save-type"])
def test_bad_flag_value_exit_2_names_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {argv[-2]}" in err


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=["batch-num-0", "resize-one-value", "save-type"])
def test_bad_flag_value_is_one_line(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(argv)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "usage:" in err and f"argument {argv[-2]}" in err
