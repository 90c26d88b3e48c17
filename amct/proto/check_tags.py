"""Tag-collision and tag-table check for the generated Caffe / AMCT schemas.

Run from anywhere:  python amct/proto/check_tags.py
Or import:          from amct.proto.check_tags import find_collisions

protoc already rejects duplicate tags inside one .proto, so the useful part
is the second half: the non-BVLC tags (fork and Ascend/AMCT extensions) and
the BVLC LayerParameter tags are compared against the explicit tables below,
so an edit that renumbers or retypes one of them is caught.
"""

import os
import sys

try:  # imported as part of the amct.proto package
    from . import amct_config_pb2, caffe_pb2
except ImportError:  # run as a script, or the folder is on sys.path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import amct_config_pb2  # noqa: E402
    import caffe_pb2  # noqa: E402

# LayerParameter tags as defined by BVLC Caffe master.
BVLC_LAYER_TAGS = {
    1: "name", 2: "type", 3: "bottom", 4: "top", 5: "loss_weight",
    6: "param", 7: "blobs", 8: "include", 9: "exclude", 10: "phase",
    11: "propagate_down",
    100: "transform_param", 101: "loss_param", 102: "accuracy_param",
    103: "argmax_param", 104: "concat_param", 105: "contrastive_loss_param",
    106: "convolution_param", 107: "data_param", 108: "dropout_param",
    109: "dummy_data_param", 110: "eltwise_param", 111: "exp_param",
    112: "hdf5_data_param", 113: "hdf5_output_param", 114: "hinge_loss_param",
    115: "image_data_param", 116: "infogain_loss_param",
    117: "inner_product_param", 118: "lrn_param", 119: "memory_data_param",
    120: "mvn_param", 121: "pooling_param", 122: "power_param",
    123: "relu_param", 124: "sigmoid_param", 125: "softmax_param",
    126: "slice_param", 127: "tanh_param", 128: "threshold_param",
    129: "window_data_param", 130: "python_param", 131: "prelu_param",
    132: "spp_param", 133: "reshape_param", 134: "log_param",
    135: "flatten_param", 136: "reduction_param", 137: "embed_param",
    138: "tile_param", 139: "batch_norm_param", 140: "elu_param",
    141: "bias_param", 142: "scale_param", 143: "input_param",
    144: "crop_param", 145: "parameter_param", 146: "recurrent_param",
    147: "swish_param", 148: "clip_param",
}

# Tags added on top of BVLC: (message, tag) -> (field name, type name).
# Type name is the message type's name or the scalar kind.
EXTENSION_TAGS = {
    ("BlobProto", 10): ("int8_data", "bytes"),
    ("BlobProto", 11): ("int32_data", "int32"),
    ("BlobProto", 12): ("uint64_data", "uint64"),
    ("LayerParameter", 149): ("upsample_param", "UpsampleParameter"),
    ("LayerParameter", 164): ("shuffle_channel_param", "ShuffleChannelParameter"),
    ("LayerParameter", 200): ("annotated_data_param", "AnnotatedDataParameter"),
    ("LayerParameter", 201): ("multibox_loss_param", "MultiBoxLossParameter"),
    ("LayerParameter", 202): ("permute_param", "PermuteParameter"),
    ("LayerParameter", 203): ("prior_box_param", "PriorBoxParameter"),
    ("LayerParameter", 204): ("detection_output_param", "DetectionOutputParameter"),
    ("LayerParameter", 205): ("detection_evaluate_param", "DetectionEvaluateParameter"),
    ("LayerParameter", 206): ("norm_param", "NormalizeParameter"),
    ("LayerParameter", 207): ("video_data_param", "VideoDataParameter"),
    ("LayerParameter", 208): ("quant_param", "QuantParameter"),
    ("LayerParameter", 100000): ("relu6_param", "ReLU6Parameter"),
    ("LayerParameter", 200000): ("dequant_param", "DeQuantParameter"),
    ("LayerParameter", 200001): ("ifmr_param", "IFMRParameter"),
    ("LayerParameter", 200002): ("hfmg_param", "HFMGParameter"),
    ("LayerParameter", 200003): ("search_n_param", "SearchNParameter"),
}

# BlobProto fields whose packed encoding is part of the on-disk format.
PACKED_FIELDS = {
    ("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "diff"),
    ("BlobProto", "double_data"), ("BlobProto", "double_diff"),
    ("BlobProto", "int32_data"), ("BlobProto", "uint64_data"),
}

_SCALAR_NAMES = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32",
    6: "fixed64", 7: "fixed32", 8: "bool", 9: "string", 12: "bytes",
    13: "uint32", 15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64",
}


def _type_name(field):
    if field.message_type is not None:
        return field.message_type.name
    if field.enum_type is not None:
        return field.enum_type.name
    return _SCALAR_NAMES.get(field.type, str(field.type))


def _walk_messages(descriptor):
    yield descriptor
    for nested in descriptor.nested_types:
        for sub in _walk_messages(nested):
            yield sub


def _all_messages(modules):
    for module in modules:
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for sub in _walk_messages(message):
                yield sub


def _all_enums(modules):
    for module in modules:
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            yield enum
    for message in _all_messages(modules):
        for enum in message.enum_types:
            yield enum


def find_collisions(modules=(caffe_pb2, amct_config_pb2)):
    """Return a list of problems (empty when the schemas are consistent)."""
    problems = []

    for message in _all_messages(modules):
        seen_numbers = {}
        seen_names = set()
        for field in message.fields:
            if field.number in seen_numbers:
                problems.append("%s: tag %d used by both %s and %s" % (
                    message.full_name, field.number,
                    seen_numbers[field.number], field.name))
            seen_numbers[field.number] = field.name
            if field.name in seen_names:
                problems.append("%s: field name %s repeated" % (
                    message.full_name, field.name))
            seen_names.add(field.name)

    for enum in _all_enums(modules):
        seen = {}
        for value in enum.values:
            if value.number in seen and not enum.GetOptions().allow_alias:
                problems.append("%s: value %d used by both %s and %s" % (
                    enum.full_name, value.number, seen[value.number],
                    value.name))
            seen.setdefault(value.number, value.name)

    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_number
    for number, name in sorted(BVLC_LAYER_TAGS.items()):
        field = layer_fields.get(number)
        if field is None or field.name != name:
            problems.append("LayerParameter tag %d should be %s, found %s" % (
                number, name, field.name if field else "nothing"))

    for (message_name, number), (name, type_name) in sorted(
            EXTENSION_TAGS.items()):
        message = getattr(caffe_pb2, message_name).DESCRIPTOR
        field = message.fields_by_number.get(number)
        if field is None:
            problems.append("%s tag %d (%s) missing" % (
                message_name, number, name))
            continue
        if field.name != name or _type_name(field) != type_name:
            problems.append("%s tag %d should be %s %s, found %s %s" % (
                message_name, number, type_name, name, _type_name(field),
                field.name))

    # Every LayerParameter tag must be BVLC's or listed as an extension.
    for number, field in sorted(layer_fields.items()):
        if number not in BVLC_LAYER_TAGS and \
                ("LayerParameter", number) not in EXTENSION_TAGS:
            problems.append("LayerParameter tag %d (%s) is in neither table" % (
                number, field.name))

    for message_name, name in sorted(PACKED_FIELDS):
        field = getattr(caffe_pb2, message_name).DESCRIPTOR.fields_by_name[name]
        if not field.is_packed:
            problems.append("%s.%s must be packed" % (message_name, name))

    return problems


def extension_report():
    """Lines describing every non-BVLC tag, in tag order."""
    lines = []
    for (message_name, number), (name, type_name) in sorted(
            EXTENSION_TAGS.items(), key=lambda item: (item[0][0], item[0][1])):
        lines.append("%-15s %7d  %-26s %s" % (
            message_name, number, name, type_name))
    return lines


def main():
    print("Non-BVLC tags (fork / Ascend / AMCT extensions):")
    for line in extension_report():
        print("  " + line)
    problems = find_collisions()
    if problems:
        print("FAILED: %d problem(s)" % len(problems))
        for problem in problems:
            print("  " + problem)
        return 1
    count = sum(1 for _ in _all_messages((caffe_pb2, amct_config_pb2)))
    print("OK: %d messages checked, no tag or name collisions, tables match."
          % count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
