#!/usr/bin/env python3
"""Same as the `glm-ms-convert` console script, runnable from a checkout: python3 scripts/convert_weights.py --help"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from glm_ms.convert.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
