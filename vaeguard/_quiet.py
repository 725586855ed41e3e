"""Import Keras (and TensorFlow under it) without TensorFlow's C++ start-up chatter.

TensorFlow 2.21 writes absl log lines straight to file descriptor 2 while it loads, before
TF_CPP_MIN_LOG_LEVEL takes effect. They would interleave with CLI output and JSON logs, so the
import runs with fd 2 pointed at /dev/null. Python exceptions still propagate normally.
Set VAEGUARD_TF_VERBOSE=1 to see the lines.
"""

from __future__ import annotations

import os
import sys


def import_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules or os.environ.get("VAEGUARD_TF_VERBOSE"):
        import keras

        return keras
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    _quiet_tensorflow_logger()
    return keras


def _quiet_tensorflow_logger() -> None:
    """TensorFlow's Python logger warns about retracing each time a model is loaded and warmed
    (every batch-size bucket traces once, by design); keep only its errors."""
    if "tensorflow" in sys.modules and not os.environ.get("VAEGUARD_TF_VERBOSE"):
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
