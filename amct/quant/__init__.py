"""Quantization numerics: rounding, weight (ARQ) and activation (IFMR, HFMG)
factor search, derived deploy quantities and the scale/offset record file.

Everything here is plain numpy on arrays; the graph passes and the emitters
call these helpers so that one formula lives in exactly one place.
"""
from amct.quant.arq import arq_weights, channel_scale_view
from amct.quant.bias import quantize_bias
from amct.quant.deq_scale import pack_deq_scale, unpack_deq_scale
from amct.quant.info import LayerQuant
from amct.quant.record import (LayerRecord, create_empty_record, merge_record, read_record,
                               write_record)
from amct.quant.rounding import FLT_EPSILON, round_half_away

__all__ = ["round_half_away", "FLT_EPSILON", "arq_weights", "channel_scale_view",
           "quantize_bias", "pack_deq_scale", "unpack_deq_scale", "LayerQuant",
           "LayerRecord", "read_record", "write_record", "merge_record", "create_empty_record"]
