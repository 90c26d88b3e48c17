"""The toolkit's graph IR: layers, the graph and the layer-type registry."""
from amct.ir.graph import Dataflow, Graph, blob_of, blobs_equal, value_id
from amct.ir.layer import Layer
from amct.ir.registry import (Kernel, LayerDef, Shape, get_layer_def, register_function_layer,
                              register_layer, registered_types, require_layer_def,
                              unregister_layer)

__all__ = ["Graph", "Layer", "Dataflow", "LayerDef", "Kernel", "Shape", "register_layer",
           "register_function_layer", "unregister_layer", "get_layer_def", "require_layer_def",
           "registered_types", "value_id", "blob_of", "blobs_equal"]
