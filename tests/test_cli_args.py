"""CLI parsing, aliases, exit codes and one-line error messages; logging variables."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from amct import cli
from amct.cli import common
from amct.errors import ConfigError, DataError
from amct.log import get_logger, parse_level, setup_logging


def own_handlers(logger):
    return [h for h in logger.handlers if getattr(h, "_amct_own_handler", False)]


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_amct_aliases_map_to_the_same_options():
    a = parse("calibrate", "--model", "m", "--weights", "w", "--data_dir", "d", "--save_path", "out/x",
              "--input_shape", "data:8,3,32,32", "--batch_num", "3")
    b = parse("calibrate", "--model", "m", "--weights", "w", "--data", "d", "--save-path", "out/x",
              "--input-shape", "data:8,3,32,32", "--batch-num", "3")
    for k in ("data", "save_path", "input_shape", "batch_num"):
        assert getattr(a, k) == getattr(b, k)
    assert a.data == ["d"] and a.batch_num == 3


def test_preprocessing_values_are_parsed():
    a = parse("calibrate", "--model", "m", "--weights", "w", "--data", "d", "--save-path", "p",
              "--resize", "256,256", "--crop", "224x224", "--mean", "104,117,123", "--scale", "1/128",
              "--rgb", "--transpose-hw", "--skip-layers", "conv1,fc", "--algo", "hfmg", "--save-type", "deploy")
    assert a.resize == (256, 256) and a.crop == (224, 224) and a.mean == (104.0, 117.0, 123.0)
    assert a.scale == 1 / 128 and a.rgb and a.transpose_hw and a.algo == "hfmg"
    assert a.save_type == "Deploy" and common.split_names(a.skip_layers) == ["conv1", "fc"]


def test_input_shapes_repeatable_and_amct_semicolons():
    assert common.input_shapes(["data:1,3,224,224", "im_info:1,3"]) == {
        "data": (1, 3, 224, 224), "im_info": (1, 3)}
    assert common.input_shapes(["a:2,3;b:4"]) == {"a": (2, 3), "b": (4,)}
    with pytest.raises(DataError, match="expected name:n,c,h,w"):
        common.input_shapes(["1,3,224,224"])


def test_global_flags_before_or_after_the_command():
    assert parse("--quiet", "inspect", "--model", "m").quiet is True
    assert parse("inspect", "--model", "m", "--debug").debug is True
    a = parse("--debug", "inspect", "--model", "m")
    assert a.debug is True and a.quiet is False


@pytest.mark.parametrize("argv", [
    ["calibrate", "--model", "m"],                                  # missing required flags
    ["calibrate", "--model", "m", "--weights", "w", "--data", "d", "--save-path", "p", "--resize", "3"],
    ["calibrate", "--model", "m", "--weights", "w", "--data", "d", "--save-path", "p", "--algo", "x"],
    ["calibrate", "--model", "m", "--weights", "w", "--data", "d", "--save-path", "p",
     "--mean", "1", "--mean-file", "f"],
    ["no-such-command"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_project_error_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing.prototxt"
    assert cli.main(["inspect", "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("amct-caffe: error: ")
    assert str(missing) in err and "Traceback" not in err


def test_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--debug", "inspect", "--model", str(tmp_path / "m.prototxt")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_internal_error_exit_1_with_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    from amct.cli import inspect_cmd

    def boom(args):
        raise RuntimeError("kaboom\nsecond line")
    monkeypatch.setattr(inspect_cmd, "run", boom)
    assert cli.main(["inspect", "--model", "m"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kaboom second line" in err and "--debug" in err


def test_auto_calibrate_requires_data_and_save_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["auto-calibrate", "--model", "m", "--weights", "w"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--data" in err and "--save-dir" in err


def test_bad_log_level_variable(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMCT_LOG_LEVEL", "loud")
    assert cli.main(["inspect", "--model", "m"]) == 2
    assert "AMCT_LOG_LEVEL='loud'" in capsys.readouterr().err


def test_log_levels_and_lazy_file(monkeypatch, tmp_path):
    assert parse_level("debug", "X") == logging.DEBUG and parse_level(None, "X") == logging.INFO
    with pytest.raises(ConfigError, match="AMCT_LOG_FILE_LEVEL"):
        parse_level("verbose", "AMCT_LOG_FILE_LEVEL")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMCT_LOG_LEVEL", "error")
    monkeypatch.setenv("AMCT_LOG_FILE_LEVEL", "Warning")
    logger = setup_logging()
    try:
        logger.info("not written anywhere")
        assert not (tmp_path / "amct_log").exists()       # the file is created lazily
        get_logger("x").warning("to the file")
        own_handlers(logger)[-1].flush()
        text = (tmp_path / "amct_log" / "amct_caffe.log").read_text()
        assert "to the file" in text and "not written" not in text
        assert len(own_handlers(setup_logging())) == 2     # re-setup replaces, never duplicates
    finally:
        for h in own_handlers(logger):
            logger.removeHandler(h)
            h.close()


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "amct", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0
    for name in ("calibrate", "convert", "inspect", "compare", "evaluate", "auto-calibrate", "demo"):
        assert name in r.stdout


def test_disable_pass_reaches_the_pipelines(tmp_path, capsys, monkeypatch):
    """--disable-pass switches a fusion off for the run only (pass names are CLI vocabulary)."""
    import json

    from amct.passes import pipeline

    monkeypatch.chdir(tmp_path)
    from conftest import shared_or_skip

    golden = shared_or_skip("golden", "chain_resblock")
    model, weights = str(golden / "net.prototxt"), str(golden / "weights.caffemodel")
    record = tmp_path / "record.txt"
    record.write_text("".join(
        f'record {{ key: "{k}" value {{ scale_d: 0.05 offset_d: 0 }} }}\n' for k in ("conv1", "conv2")))
    assert cli.main(["--quiet", "--disable-pass", "fuse_conv_bn_scale", "convert", "--model", model,
                     "--weights", weights, "--record", str(record), "--save-path", "nofuse"]) == 0
    assert json.loads((tmp_path / "nofuse_quant.json").read_text())["fusions"] == []
    assert "fuse_conv_bn_scale" not in pipeline("convert").disabled   # restored after the run
    assert cli.main(["--quiet", "convert", "--model", model, "--weights", weights,
                     "--record", str(record), "--save-path", "fused"]) == 0
    assert len(json.loads((tmp_path / "fused_quant.json").read_text())["fusions"]) == 2
    assert cli.main(["--disable-pass", "no_such_pass", "inspect", "--model", model]) == 2
    assert "cannot disable unknown pass(es) no_such_pass" in capsys.readouterr().err
