"""Upgrade legacy nets to the current form and select the TEST-phase net.

Mirrors what Caffe does on load: V0 (flat, padding layers) -> V1 (``layers {}``
with enum types) -> V2 (``layer {}`` with string types); top-level ``input``
fields -> an ``Input`` layer named "input"; then NetStateRule filtering.
"""
from __future__ import annotations

from amct.errors import ModelFormatError
from amct.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V1 enum name -> V2 type string (as in Caffe's UpgradeV1LayerType).
_V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 type string -> V1 enum name.
_V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss":
    "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS", "split": "SPLIT", "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}


def _copy_weighted(p, v0: caffe_pb2.V0LayerParameter) -> None:
    """The V0 fields shared by convolution and inner product parameters."""
    if v0.HasField("num_output"):
        p.num_output = v0.num_output
    if v0.HasField("biasterm"):
        p.bias_term = v0.biasterm
    for f in ("weight_filler", "bias_filler"):
        if v0.HasField(f):
            getattr(p, f).CopyFrom(getattr(v0, f))


def _v0_to_v1(v1: caffe_pb2.V1LayerParameter, v0: caffe_pb2.V0LayerParameter, where: str,
              pad: int | None = None) -> None:
    """Fill V1 fields from a nested V0 layer (Caffe's UpgradeV0LayerParameter)."""
    if v0.HasField("name"):
        v1.name = v0.name
    t = v0.type
    if t not in _V0_TYPES:
        raise ModelFormatError(f"{where}: V0 layer '{v0.name}' has unknown type '{t}'")
    v1.type = V1.LayerType.Value(_V0_TYPES[t])
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    if t == "conv":
        p = v1.convolution_param
        _copy_weighted(p, v0)
        if v0.HasField("kernelsize"):
            p.kernel_size.append(v0.kernelsize)
        if v0.HasField("group"):
            p.group = v0.group
        if v0.HasField("stride"):
            p.stride.append(v0.stride)
        if pad:
            p.pad.append(pad)
        elif v0.HasField("pad"):
            p.pad.append(v0.pad)
    elif t == "innerproduct":
        _copy_weighted(v1.inner_product_param, v0)
    elif t == "pool":
        p = v1.pooling_param
        if v0.HasField("kernelsize"):
            p.kernel_size = v0.kernelsize
        if v0.HasField("stride"):
            p.stride = v0.stride
        if pad:
            p.pad = pad
        elif v0.HasField("pad"):
            p.pad = v0.pad
        if v0.HasField("pool"):
            p.pool = v0.pool
    elif t == "dropout":
        if v0.HasField("dropout_ratio"):
            v1.dropout_param.dropout_ratio = v0.dropout_ratio
    elif t == "lrn":
        p = v1.lrn_param
        for f in ("local_size", "alpha", "beta", "k"):
            if v0.HasField(f):
                setattr(p, f, getattr(v0, f))
    elif t == "concat":
        if v0.HasField("concat_dim"):
            v1.concat_param.concat_dim = v0.concat_dim
    elif t == "data":
        p = v1.data_param
        if v0.HasField("source"):
            p.source = v0.source
        if v0.HasField("batchsize"):
            p.batch_size = v0.batchsize
        if v0.HasField("rand_skip"):
            p.rand_skip = v0.rand_skip
        tp = v1.transform_param
        if v0.HasField("scale"):
            tp.scale = v0.scale
        if v0.HasField("meanfile"):
            tp.mean_file = v0.meanfile
        if v0.HasField("cropsize"):
            tp.crop_size = v0.cropsize
        if v0.HasField("mirror"):
            tp.mirror = v0.mirror
    elif t == "hdf5_output" and v0.HasField("hdf5_output_param"):
        v1.hdf5_output_param.CopyFrom(v0.hdf5_output_param)


def upgrade_v0_layers(net: caffe_pb2.NetParameter, where: str) -> None:
    """Upgrade ``layers { layer { ... } }`` (V0) entries in place to V1, merging
    V0 ``padding`` layers into the convolution/pooling that follows them."""
    if not any(x.HasField("layer") for x in net.layers):
        return
    old = list(net.layers)
    del net.layers[:]
    pads: dict[str, tuple[int, str]] = {}   # padded top -> (pad, original bottom)
    for x in old:
        if not x.HasField("layer"):
            net.layers.add().CopyFrom(x)
            continue
        v0 = x.layer
        if v0.type == "padding":
            if len(x.bottom) != 1 or len(x.top) != 1:
                raise ModelFormatError(f"{where}: V0 padding layer '{v0.name}' needs one bottom and one top")
            pads[x.top[0]] = (v0.pad, x.bottom[0])
            continue
        y = net.layers.add()
        pad = None
        for b in x.bottom:
            if b in pads:
                if v0.type not in ("conv", "pool"):
                    raise ModelFormatError(f"{where}: V0 padding feeds non-conv layer '{v0.name}'")
                pad, src = pads[b]
                y.bottom.append(src)
            else:
                y.bottom.append(b)
        y.top.extend(x.top)
        for f in ("include", "exclude"):
            getattr(y, f).extend(getattr(x, f))
        _v0_to_v1(y, v0, where, pad)
        y.blobs.extend(v0.blobs)
        y.blobs.extend(x.blobs)


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, where: str) -> caffe_pb2.LayerParameter:
    """One V1 layer -> a V2 LayerParameter (blobs included)."""
    out = caffe_pb2.LayerParameter()
    out.name = v1.name
    enum_name = V1.LayerType.Name(v1.type) if v1.HasField("type") else "NONE"
    out.type = _V1_TYPES.get(enum_name, enum_name)
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.loss_weight.extend(v1.loss_weight)
    out.blobs.extend(v1.blobs)
    n = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(n):
        ps = out.param.add()
        if i < len(v1.param):
            ps.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            ps.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            ps.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            ps.decay_mult = v1.weight_decay[i]
    lp_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for fd, value in v1.ListFields():
        if fd.name.endswith("_param") and fd.name in lp_fields:
            getattr(out, fd.name).CopyFrom(value)
    return out


def upgrade_net(net: caffe_pb2.NetParameter, where: str) -> bool:
    """Upgrade ``net`` in place to V2 with an Input layer.  Returns whether the
    inputs came from legacy top-level fields."""
    if len(net.layers) and len(net.layer):
        raise ModelFormatError(f"{where}: mixes V1 'layers' and V2 'layer' entries")
    if len(net.layers):
        upgrade_v0_layers(net, where)
        for x in net.layers:
            net.layer.add().CopyFrom(upgrade_v1_layer(x, where))
        del net.layers[:]
    legacy_inputs = bool(len(net.input))
    if legacy_inputs:
        if len(net.input_dim) and len(net.input_shape):
            raise ModelFormatError(f"{where}: give input_dim or input_shape, not both")
        if len(net.input_dim) and len(net.input_dim) != 4 * len(net.input):
            raise ModelFormatError(f"{where}: {len(net.input)} inputs need {4 * len(net.input)} "
                                   f"input_dim values, found {len(net.input_dim)}")
        if len(net.input_shape) not in (0, len(net.input)):
            raise ModelFormatError(f"{where}: {len(net.input)} inputs but {len(net.input_shape)} input_shape entries")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(net.input)
        for i in range(len(net.input)):
            if len(net.input_shape):
                layer.input_param.shape.add().CopyFrom(net.input_shape[i])
            elif len(net.input_dim):
                layer.input_param.shape.add().dim.extend(net.input_dim[4 * i:4 * i + 4])
        old = list(net.layer)
        del net.layer[:]
        net.layer.add().CopyFrom(layer)
        net.layer.extend(old)
        for f in ("input", "input_dim", "input_shape"):
            net.ClearField(f)
    return legacy_inputs


def _rule_matches(rule: caffe_pb2.NetStateRule, state: caffe_pb2.NetState) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(s not in state.stage for s in rule.stage):
        return False
    if any(s in state.stage for s in rule.not_stage):
        return False
    return True


def filter_phase(net: caffe_pb2.NetParameter, where: str, phase: int = caffe_pb2.TEST) -> None:
    """Keep the layers Caffe would instantiate in ``phase`` (include/exclude rules)."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net.state)
    state.phase = phase
    kept = []
    for x in net.layer:
        if len(x.include) and len(x.exclude):
            raise ModelFormatError(f"{where}: layer '{x.name}' has both include and exclude rules")
        if len(x.include):
            keep = any(_rule_matches(r, state) for r in x.include)
        else:
            keep = not any(_rule_matches(r, state) for r in x.exclude)
        if keep:
            kept.append(x)
    if len(kept) != len(net.layer):
        del net.layer[:]
        net.layer.extend(kept)
