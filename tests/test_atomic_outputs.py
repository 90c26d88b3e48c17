"""Issue 7: outputs are written via temp + rename; an interrupted write changes nothing.

Three writers are interrupted halfway through a file: save_model (the five
files, one AtomicGroup), the record file while calibration merges factors into
it (merge_record, from inside a forward pass) and the config
(create_quant_config).  Two kinds of interruption:

* in-process faults: the file object fails (ENOSPC) or the caffemodel encoder
  raises after writing part of its output;
* a subprocess SIGKILLed while it is blocked halfway through writing a file
  (it announces the point on stdout, the parent kills it).

After each: the previous outputs are byte-identical and the directory lists
exactly the same names (no partial file under the real name, no temporary file).
"""
from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import amct
import amct.fileio as fileio
from amct.errors import OutputError
from amct.quant.record import read_record
from conftest import DATA, REPO

M = str(DATA / "lenet/mnist_deploy.prototxt")
W = str(DATA / "lenet/lenet_iter_10000.caffemodel")
SUFFIXES = ("_fake_quant_model.prototxt", "_fake_quant_weights.caffemodel",
            "_deploy_model.prototxt", "_deploy_weights.caffemodel", "_quant.json")


def anonymous_temp_supported(d: Path) -> bool:
    t = fileio._Temp(str(d / "probe"), True)
    try:
        return t.anonymous
    finally:
        t.discard()


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (hidden ones included) -> its bytes."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(d))] = p.read_bytes()
    return out


class Interrupted(Exception):
    """The injected fault of the non-OSError kind."""


class FaultyFile:
    """Wraps a file being written: the first write to ``target`` writes half its data, then fails."""

    def __init__(self, f, path: str, target: str, fault) -> None:
        self._f, self._path, self._target, self._fault = f, path, target, fault

    def write(self, data):
        if self._path.endswith(self._target) and self._fault.armed:
            self._fault.armed = False
            self._f.write(data[: max(1, len(data) // 2)])
            self._f.flush()
            self._fault.fire(self._path)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


class Fault:
    def __init__(self, exc: BaseException) -> None:
        self.exc, self.armed, self.fired_on = exc, True, None

    def fire(self, path: str) -> None:
        self.fired_on = path
        raise self.exc


@contextlib.contextmanager
def faulty_writes(monkeypatch, target: str, exc: BaseException):
    """Make the first write into a file whose name ends with ``target`` fail halfway."""
    fault = Fault(exc)
    real = fileio._writing

    @contextlib.contextmanager
    def writing(tmp, mode):
        with real(tmp, mode) as f:
            yield FaultyFile(f, tmp.path, target, fault)

    monkeypatch.setattr(fileio, "_writing", writing)
    yield fault
    monkeypatch.setattr(fileio, "_writing", real)
    assert fault.fired_on is not None, f"no write to *{target} happened: the fault never fired"


@pytest.fixture(params=["anonymous", "named"])
def temp_kind(request, monkeypatch, tmp_path):
    """Both temporary-file strategies of amct.fileio: O_TMPFILE and mkstemp (the fallback)."""
    if request.param == "named":
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    elif not anonymous_temp_supported(tmp_path):
        pytest.skip("O_TMPFILE not supported here")
    return request.param


def batches(seed: int, n: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((2, 1, 28, 28), dtype=np.float32) for _ in range(n)]


def calibrated(work: Path, seed: int, batch_num: int = 1):
    work.mkdir(parents=True, exist_ok=True)
    cfg, rec = str(work / "config.json"), str(work / "record.txt")
    amct.create_quant_config(cfg, M, W, batch_num=batch_num)
    g = amct.init(cfg, M, W, rec)
    amct.quantize_model(g, str(work / "m.prototxt"), str(work / "m.caffemodel"))
    net = amct.runtime.Net(str(work / "m.prototxt"), str(work / "m.caffemodel"))
    for x in batches(seed, batch_num):
        net.forward(data=x)
    return g


@pytest.fixture(scope="module")
def previous(tmp_path_factory):
    """A finished save_model (seed 0) and a second calibrated graph (seed 1) to save over it."""
    root = tmp_path_factory.mktemp("atomic")
    g0 = calibrated(root / "w0", seed=0)
    amct.save_model(g0, "Both", str(root / "out" / "lenet"))
    g1 = calibrated(root / "w1", seed=1)
    return root, g1


# ----------------------------------------------------------- save_model
@pytest.mark.parametrize("target", SUFFIXES)
def test_save_model_fault_keeps_previous_outputs(previous, monkeypatch, temp_kind, target, tmp_path):
    root, g1 = previous
    out = tmp_path / "out"
    out.mkdir()
    for name, data in snapshot(root / "out").items():
        (out / name).write_bytes(data)
    before = snapshot(out)
    with faulty_writes(monkeypatch, target, OSError(errno.ENOSPC, "No space left on device")):
        with pytest.raises(OutputError, match=rf"{out}/lenet{target}: write failed: No space left"):
            amct.save_model(g1, "Both", str(out / "lenet"))
    assert snapshot(out) == before
    # the same save without the fault does change every model file (the test can fail)
    amct.save_model(g1, "Both", str(out / "lenet"))
    after = snapshot(out)
    assert sorted(after) == sorted(before)
    assert after["lenet_deploy_weights.caffemodel"] != before["lenet_deploy_weights.caffemodel"]


def test_save_model_encoder_fault_keeps_previous_outputs(previous, monkeypatch, temp_kind, tmp_path):
    """The caffemodel encoder itself dies after writing part of a file."""
    from amct.frontends.caffe import wire

    root, g1 = previous
    out = tmp_path / "out"
    out.mkdir()
    for name, data in snapshot(root / "out").items():
        (out / name).write_bytes(data)
    before = snapshot(out)
    real, calls = wire.write_net, []

    def dying_write_net(f, head, items):
        calls.append(1)
        if len(calls) == 2:                       # the deploy caffemodel
            f.write(b"\x0a\x05LeNet" * 100)
            raise Interrupted("encoder died")
        return real(f, head, items)

    monkeypatch.setattr(wire, "write_net", dying_write_net)
    with pytest.raises(Interrupted):
        amct.save_model(g1, "Both", str(out / "lenet"))
    assert len(calls) == 2
    assert snapshot(out) == before


# ---------------------------------------------------- record during calibration
def test_record_merge_fault_keeps_last_complete_record(monkeypatch, temp_kind, tmp_path):
    """Calibration writes the factors of every layer that finished in a forward
    pass in one merge at the end of the pass; that write fails halfway: the
    record is the complete one from before the pass, with no temporary left."""
    cfg, rec = str(tmp_path / "config.json"), str(tmp_path / "record.txt")
    amct.create_quant_config(cfg, M, W, batch_num=1)
    g = amct.init(cfg, M, W, rec)
    amct.quantize_model(g, str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))
    net = amct.runtime.Net(str(tmp_path / "m.prototxt"), str(tmp_path / "m.caffemodel"))

    states, merged = [], []
    import amct.layers.calibration as cal
    real_merge = cal.merge_records

    def merge(path, updates):
        states.append(Path(path).read_bytes())
        merged.append(sorted(updates))
        return real_merge(path, updates)

    monkeypatch.setattr(cal, "merge_records", merge)
    fault = Fault(OSError(errno.EIO, "Input/output error"))
    real = fileio._writing

    @contextlib.contextmanager
    def writing(tmp, mode):
        with real(tmp, mode) as f:
            yield FaultyFile(f, tmp.path, "record.txt", fault)

    monkeypatch.setattr(fileio, "_writing", writing)
    listing = sorted(os.listdir(tmp_path))
    before = Path(rec).read_bytes()
    with pytest.raises(OutputError, match=rf"{rec}: write failed: Input/output error"):
        net.forward(data=batches(0)[0])
    assert fault.fired_on == rec
    assert merged == [["conv1", "conv2", "ip1", "ip2"]]     # one write for the whole pass
    assert Path(rec).read_bytes() == states[0] == before    # untouched, whole
    assert sum(r.has_activation for r in read_record(rec).values()) == 0
    assert sorted(os.listdir(tmp_path)) == listing


# --------------------------------------------------------------- config
def test_config_fault_keeps_previous_config(monkeypatch, temp_kind, tmp_path):
    cfg = tmp_path / "config.json"
    amct.create_quant_config(str(cfg), M, W, batch_num=1)
    before = snapshot(tmp_path)
    with faulty_writes(monkeypatch, "config.json", OSError(errno.ENOSPC, "No space left on device")):
        with pytest.raises(OutputError, match=rf"{cfg}: write failed"):
            amct.create_quant_config(str(cfg), M, W, batch_num=7, skip_layers=["ip2"])
    assert snapshot(tmp_path) == before
    amct.create_quant_config(str(cfg), M, W, batch_num=7, skip_layers=["ip2"])
    assert snapshot(tmp_path) != before


# ----------------------------------------------------- killed mid-write
CHILD = textwrap.dedent('''
    import contextlib, os, sys, time
    import numpy as np
    import amct, amct.fileio as fileio
    op, work, target = sys.argv[1], sys.argv[2], sys.argv[3]
    M, W = {M!r}, {W!r}
    real = fileio._writing

    class Stall:
        def __init__(self, f, path):
            self.f, self.path = f, path
        def write(self, data):
            if self.path.endswith(target):
                self.f.write(data[: max(1, len(data) // 2)])
                self.f.flush()
                print("WRITING", self.path, flush=True)
                time.sleep(120)
            return self.f.write(data)
        def __getattr__(self, n):
            return getattr(self.f, n)

    @contextlib.contextmanager
    def writing(tmp, mode):
        with real(tmp, mode) as f:
            yield Stall(f, tmp.path)

    def calibrate(arm_before_forward):
        cfg, rec = os.path.join(work, "config.json"), os.path.join(work, "record.txt")
        g = amct.init(cfg, M, W, rec)
        amct.quantize_model(g, os.path.join(work, "m.prototxt"), os.path.join(work, "m.caffemodel"))
        net = amct.runtime.Net(os.path.join(work, "m.prototxt"), os.path.join(work, "m.caffemodel"))
        if arm_before_forward:
            fileio._writing = writing
        x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
        net.forward(data=x)
        return g

    if op == "save_model":
        g = calibrate(False)
        fileio._writing = writing
        amct.save_model(g, "Both", os.path.join(work, "out", "lenet"))
    elif op == "record":
        calibrate(True)
    elif op == "config":
        fileio._writing = writing
        amct.create_quant_config(os.path.join(work, "config.json"), M, W, batch_num=5,
                                 skip_layers=["conv2"])
    print("FINISHED", flush=True)
''').format(M=M, W=W)


def kill_while_writing(op: str, work: Path, target: str) -> str:
    """Run CHILD, wait until it is halfway through ``target``, SIGKILL it; returns the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, op, str(work), target],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("WRITING "), f"child did not reach the write: {line!r} " \
            f"{proc.stderr.read() if proc.poll() is not None else ''}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        return line.split(" ", 1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.fixture(scope="module")
def finished_work(tmp_path_factory):
    """A complete flow (seed 0): config, record, modified model and the five outputs."""
    work = tmp_path_factory.mktemp("killed")
    g = calibrated(work, seed=0)
    amct.save_model(g, "Both", str(work / "out" / "lenet"))
    return work


@pytest.mark.parametrize("op, target", [("save_model", "_deploy_weights.caffemodel"),
                                        ("record", "record.txt"),
                                        ("config", "config.json")])
def test_sigkill_mid_write_keeps_previous_outputs(finished_work, tmp_path, op, target):
    if not anonymous_temp_supported(tmp_path):
        pytest.skip("without O_TMPFILE a SIGKILL leaves the hidden .tmp file (documented)")
    work = tmp_path / "work"
    work.mkdir()
    for name, data in snapshot(finished_work).items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    before = snapshot(work)
    path = kill_while_writing(op, work, target)
    assert path == str(work / (("out/lenet" if op == "save_model" else "") + target))
    after = snapshot(work)
    assert sorted(after) == sorted(before), "a partial or temporary file was left behind"
    if op == "record":
        # init empties the record and quantize_model rewrites it (scale_w only) before
        # the forward pass: that is the previous record the killed merge must keep
        rec = read_record(str(work / "record.txt"))
        assert sorted(rec) == ["conv1", "conv2", "ip1", "ip2"]
        assert all(r.has_weights and not r.has_activation for r in rec.values())
        changed = {k for k in before if before[k] != after[k]}
        assert changed <= {"record.txt", "m.prototxt", "m.caffemodel"}
    elif op == "save_model":
        # the child recalibrated (record, modified model rewritten); the outputs must not change
        outs = sorted(k for k in before if k.startswith("out/"))
        assert len(outs) == 5
        assert all(after[k] == before[k] for k in outs)
    else:
        assert after == before
