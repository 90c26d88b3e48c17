"""Run the bundled demo: ``python examples/lenet_mnist/run.py [--out DIR]``.

Same as ``amct-caffe demo``: calibrates LeNet on the 300 bundled MNIST training
images and prints fp32 vs INT8 (fake-quant and deploy simulation) accuracy on
the 1,000 bundled test images.
"""
import os
import sys

if __name__ == "__main__":
    # Let the demo run from a plain checkout too (no install needed beyond the
    # dependencies): put the repository root on the path.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from amct.cli import main

    sys.exit(main(["demo", "--example-dir", os.path.dirname(os.path.abspath(__file__)), *sys.argv[1:]]))
