"""Choosing where TensorFlow scores: ``auto`` (a GPU if TensorFlow sees one), ``cpu`` or ``gpu:N``.

Must run before TensorFlow initializes its devices, i.e. before any model is built or loaded.
"""

from __future__ import annotations

import logging

from vaeguard.errors import ConfigError

log = logging.getLogger("vaeguard.daemon")


def select_device(spec: str) -> str:
    """Restrict TensorFlow to the requested device and return a description for the logs."""
    from vaeguard._quiet import import_keras

    import_keras()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if spec == "cpu":
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        chosen = "cpu"
    elif spec == "auto":
        chosen = f"gpu:0 ({gpus[0].name})" if gpus else "cpu (TensorFlow sees no GPU)"
        if gpus:
            tf.config.set_visible_devices(gpus[:1], "GPU")
            tf.config.experimental.set_memory_growth(gpus[0], True)
    else:
        index = int(spec.split(":", 1)[1])
        if index >= len(gpus):
            raise ConfigError(
                f"invalid setting model.device: {spec} requested but TensorFlow sees "
                f"{len(gpus)} GPU(s)"
            )
        tf.config.set_visible_devices([gpus[index]], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)
        chosen = f"{spec} ({gpus[index].name})"
    log.info(
        "scoring device selected",
        extra={"device": chosen, "requested": spec, "gpus_visible": [g.name for g in gpus]},
    )
    return chosen
