"""``python -m amct``: the ``amct-caffe`` command line."""
import sys

from amct.cli import main

if __name__ == "__main__":
    sys.exit(main())
