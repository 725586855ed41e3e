"""The model bundle: a directory holding `model.keras` and `bundle.json`.

`bundle.json` carries everything needed to use the model correctly (feature order, scaler,
conditions, threshold, baselines) and to trust it (format version, library versions, training
record, data fingerprint, the model file's SHA-256). Loading checks all of it, and refuses a
bundle that is corrupt, tampered with or from an incompatible version, with the reason.

Every manifest has the same header (format, versions, ``kind``, the model file and its hash, the
threshold, the training record, ``extra``, the pinned ``parts`` and data ``files``); what
describes the model is the kind's own: a tabular model's features, scaler, conditions and
baselines at the top level (as ever), a window model's ``window`` section (from format 3; older
window bundles carry stand-in tabular fields and ``extra.window_mode``, and still load). Each is
checked as its kind.

This module is the format (write, read and check the manifest) and knows no model class: each
kind's reader sits with its model (`vaeguard.detector.load_bundle`,
`vaeguard.timeseries.bundle.load_window_bundle`), so the models import the format, never back.
`load_any` reads ``kind`` and hands the bundle to its kind's reader, found by name
(`register_kind`), so a bundle loads as the model it holds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import itertools
import json
import math
import os
import platform
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vaeguard._version import __version__
from vaeguard.errors import BundleError
from vaeguard.files import replacing, sha256_file, write_atomic
from vaeguard.ingest import short_repr
from vaeguard.snapshot import is_count, is_finite_number

FORMAT = "vaeguard-bundle"
#: The newest format this reads and writes. 2: the score has a latent kNN term
#: (``latent_knn``), which a reader of format 1 would silently leave out, so only bundles that
#: have one are written as 2; every other tabular bundle is still written as 1. 3: a window
#: model's own ``window`` section instead of stand-in tabular fields (a reader of format 2 would
#: find no features): window bundles are written as 3, tabular ones never.
FORMAT_VERSION = 3
#: The first format in which a window bundle has its ``window`` section.
WINDOW_SECTION_VERSION = 3
MODEL_FILE = "model.keras"
MANIFEST_FILE = "bundle.json"


def library_versions() -> dict[str, str | None]:
    from vaeguard._quiet import import_keras

    keras = import_keras()

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "vaeguard": __version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "tensorflow": version("tensorflow") or version("tensorflow-cpu"),
        "python": platform.python_version(),
    }


#: Part names: ``views/1``, ``views/2`` … (relative, no way out of the bundle; matched whole).
_PART_RE = re.compile(r"[a-z]+/[0-9]{1,3}")
#: A part's pin: the SHA-256 of its ``bundle.json``, in hex.
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: A data file of a bundle (``files``): a plain JSON file name, in the bundle's own folder.
_FILE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\.json")


def save_bundle(detector, path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write the detector to `path` (created if needed; an existing bundle there is replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BundleError(f"cannot write a bundle to {path}: it is a file")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST_FILE).exists():
        raise BundleError(
            f"refusing to write a bundle into {path}: the folder is not empty and holds no bundle"
        )
    path.mkdir(parents=True, exist_ok=True, mode=0o700)  # owner only, like its files

    with replacing(path / MODEL_FILE, suffix=".keras") as tmp:
        detector.model_.save(str(tmp))

    # A kind with a manifest section of its own (a window model's view: `bundle_fields` gives
    # its threshold, training record and ``window`` section); otherwise the tabular fields.
    fields = getattr(detector, "bundle_fields", None)
    if callable(fields):
        version, body = FORMAT_VERSION, fields()
    else:
        version = 2 if getattr(detector, "latent_knn_", None) else 1
        body = {
            "features": list(detector.feature_names_),
            "conditions": detector.conditions_.to_dict(),
            "scaler": detector.scaler_.to_dict(),
            "threshold": threshold_rule(detector).to_dict(),
            "baseline": [float(v) for v in detector.baseline_],
            "score_reference": [float(v) for v in detector.score_reference_],
            "params": {
                k: (list(v) if isinstance(v, tuple) else v)
                for k, v in detector.get_params().items()
            },
            "training": {**detector.training_info_, "history": detector.history_},
            "data_fingerprint": detector.training_info_.get("data_fingerprint"),
        }
    manifest = {
        "format": FORMAT,
        "format_version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "kind": getattr(detector, "model_kind_", "tabular"),
        "model_file": MODEL_FILE,
        "model_sha256": sha256_file(path / MODEL_FILE),
        **body,
        "extra": extra if extra is not None else getattr(detector, "bundle_extra_", {}),
    }
    parts = getattr(detector, "bundle_parts_", None) or {}
    if parts:
        # Further models of the same detector (a window model's other views), each a bundle of
        # its own in a sub-folder, pinned by the SHA-256 of its manifest.
        manifest["parts"] = {}
        for name, part in parts.items():
            if not _PART_RE.fullmatch(name):
                raise BundleError(f"bad bundle part name {name!r}")
            save_bundle(part, path / name)
            manifest["parts"][name] = sha256_file(path / name / MANIFEST_FILE)
    files = getattr(detector, "bundle_files_", None) or {}
    if files:
        # Data a kind keeps beside its manifest (a window model's per-entity state), each
        # file pinned by its SHA-256; a reader that knows none of them scores the same.
        manifest["files"] = {}
        for name, data in files.items():
            if not _FILE_RE.fullmatch(name):
                raise BundleError(f"bad bundle file name {name!r}")
            write_atomic(path / name, data)
            manifest["files"][name] = sha256_file(path / name)
    if getattr(detector, "latent_knn_", None) is not None:
        manifest["latent_knn"] = detector.latent_knn_.to_dict()
    plausible = getattr(detector, "plausible_range_", None)
    if plausible is not None:
        # Where expected values may lie (training range + margin); bundles without it load,
        # with a fallback derived from the scaler.
        manifest["plausible_range"] = plausible.to_dict()
    write_atomic(
        path / MANIFEST_FILE, (json.dumps(manifest, indent=2, allow_nan=False) + "\n").encode()
    )
    return path


def read_manifest(path) -> dict[str, Any]:
    """Parse and check `bundle.json` without loading the model (cheap: for listings and checks)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"no model bundle at {path}: the path does not exist")
    if not path.is_dir():
        raise BundleError(
            f"no model bundle at {path}: expected a directory with {MANIFEST_FILE} and {MODEL_FILE}"
        )
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"no model bundle at {path}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"corrupt bundle at {path}: {MANIFEST_FILE} is not valid JSON ({exc})"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(
            f"corrupt bundle at {path}: {MANIFEST_FILE} is not a vaeguard bundle manifest"
        )
    version = manifest.get("format_version")
    if not is_count(version, 1):
        raise BundleError(f"corrupt bundle at {path}: format_version is missing or malformed")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"incompatible bundle at {path}: format version {version} is newer than this vaeguard "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade vaeguard"
        )
    _check_manifest(path, manifest)
    return manifest


def has_window_section(m: dict[str, Any]) -> bool:
    """Whether a (read) manifest describes a window model by its ``window`` section (format 3
    on), rather than by the stand-in tabular fields and ``extra.window_mode`` of older ones."""
    return model_kind(m) == "window" and m["format_version"] >= WINDOW_SECTION_VERSION


def _check_manifest(path: Path, m: dict[str, Any]) -> None:
    """The kind, then its fields checked as that kind (a tabular manifest, and an older
    window one with its stand-in tabular fields, as before), then what every bundle has."""
    kind = model_kind(m)
    if kind not in _READERS:
        raise BundleError(
            f"corrupt bundle at {path}: kind {short_repr(kind, 80)} is not one of "
            f"{', '.join(_READERS)}"
        )
    if has_window_section(m):
        _check_window(path, m)
    else:
        _check_tabular(path, m)
        if kind == "window" and not isinstance((m.get("extra") or {}).get("window_mode"), dict):
            raise BundleError(f"corrupt bundle at {path}: a window model without extra.window_mode")
    if not isinstance(m.get("model_sha256"), str):
        raise BundleError(f"corrupt bundle at {path}: field 'model_sha256' is missing or malformed")
    bundle_file(path, m, "model_file")
    _check_parts(path, m.get("parts"))
    _check_files(path, m.get("files"))
    keras_version = str(m["versions"].get("keras", ""))
    if keras_version.split(".")[0] != "3":
        raise BundleError(
            f"incompatible bundle at {path}: written by Keras {keras_version or '?'}, this reads Keras 3"
        )


def _need(path: Path, m: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(m.get(key), kind):
        raise BundleError(f"corrupt bundle at {path}: field {key!r} is missing or malformed")
    return m[key]


def _check_tabular(path: Path, m: dict[str, Any]) -> None:
    def need(key: str, kind: type | tuple[type, ...]):
        return _need(path, m, key, kind)

    features = need("features", list)
    if (
        not features
        or not all(isinstance(f, str) for f in features)
        or len(set(features)) != len(features)
    ):
        raise BundleError(
            f"corrupt bundle at {path}: field 'features' must list unique feature names"
        )
    n = len(features)
    need("conditions", list)
    scaler = need("scaler", dict)
    for key in ("center", "scale"):
        values = scaler.get(key)
        if (
            not isinstance(values, list)
            or len(values) != n
            or not all(is_finite_number(v) for v in values)
        ):
            raise BundleError(
                f"corrupt bundle at {path}: scaler.{key} must hold {n} finite numbers"
            )
    if any(v <= 0 for v in scaler["scale"]):
        raise BundleError(f"corrupt bundle at {path}: scaler.scale must be positive")
    _check_threshold(path, m)
    reference = m.get("score_reference")
    if reference is not None and (
        not isinstance(reference, list) or not all(is_finite_number(v) for v in reference)
    ):
        raise BundleError(f"corrupt bundle at {path}: score_reference must list finite numbers")
    for key in ("training", "extra", "latent_knn"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise BundleError(f"corrupt bundle at {path}: field {key!r} must be an object")
    baseline = need("baseline", list)
    if len(baseline) != n or not all(is_finite_number(v) for v in baseline):
        raise BundleError(f"corrupt bundle at {path}: baseline must hold {n} finite numbers")
    need("params", dict)
    need("versions", dict)
    _check_plausible_range(path, m.get("plausible_range"), n)


def _check_threshold(path: Path, m: dict[str, Any]) -> None:
    threshold = _need(path, m, "threshold", dict)
    if not is_finite_number(threshold.get("value")) or not isinstance(threshold.get("method"), str):
        raise BundleError(
            f"corrupt bundle at {path}: threshold must have a finite value and a method"
        )
    if not isinstance(threshold.get("params", {}), dict) or not is_count(
        threshold.get("calibration_rows", 0)
    ):
        raise BundleError(
            f"corrupt bundle at {path}: threshold.params must be an object and "
            "threshold.calibration_rows a count"
        )
    if threshold["method"] == "budget":
        _check_budget(path, threshold.get("params", {}))


def _check_window(path: Path, m: dict[str, Any]) -> None:
    """A window model's view (format 3 on): the shared threshold and training record, and its
    ``window`` section: which view it is (view 0, the bundle's own model, carries the whole
    detector's ``config``), the channels and time conditions its model reads, the slots it
    scores and its calibration. Whether the config is a valid detector, and agrees with these
    facts and the model file, is the window reader's check (`vaeguard.timeseries.codec`)."""

    def bad(what: str) -> BundleError:
        return BundleError(f"corrupt bundle at {path}: window.{what}")

    _check_threshold(path, m)
    for key in ("training", "extra"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise BundleError(f"corrupt bundle at {path}: field {key!r} must be an object")
    _need(path, m, "versions", dict)
    w = _need(path, m, "window", dict)
    view = w.get("view")
    if not is_count(view):
        raise bad("view must be the view's index (a count)")
    if (view == 0) != isinstance(w.get("config"), dict) or (view > 0 and "config" in w):
        raise bad("config must be an object in view 0's manifest (the bundle's), and only there")
    inputs = w.get("inputs")
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(c, str) for c in inputs)
        or len(set(inputs)) != len(inputs)
    ):
        raise bad("inputs must list the unique channel names the view reads")
    n = w.get("n_inputs")
    if not is_count(n, 1) or n % len(inputs):
        raise bad(f"n_inputs must be the window length times {len(inputs)} channels")
    conditions = w.get("conditions")
    if (
        not isinstance(conditions, list)
        or not all(isinstance(c, str) for c in conditions)
        or len(set(conditions)) != len(conditions)
    ):
        raise bad("conditions must list unique time condition names")
    if not is_count(w.get("n_conditions")):
        raise bad("n_conditions must be a count")
    slots = w.get("score_slots")
    if slots is not None and not (is_count(slots, 1) and slots <= n // len(inputs)):
        raise bad("score_slots must be null or a count of slots up to the window length")
    calibration = w.get("calibration")
    baseline = calibration.get("baseline") if isinstance(calibration, dict) else None
    reference = calibration.get("score_reference") if isinstance(calibration, dict) else None
    if not (
        isinstance(baseline, list)
        and len(baseline) == n
        and all(map(is_finite_number, baseline))
        and isinstance(reference, list)
        and reference
        and all(map(is_finite_number, reference))
    ):
        raise bad(
            f"calibration must hold a baseline of {n} finite numbers and a non-empty "
            "score_reference of finite numbers"
        )
    _check_plausible_range(path, w.get("plausible_range"), n)


def tabular_summary(m: dict[str, Any]) -> dict[str, Any]:
    """What a tabular bundle does, as plain JSON data: its manifest without the calibration
    samples and reference sets (which `--full` prints)."""
    th = m["threshold"]
    training = m.get("training") or {}
    return {
        "kind": "tabular",
        "created_at": m.get("created_at"),
        "versions": m.get("versions"),
        "features": m["features"],
        "conditions": m["conditions"],
        "threshold": {
            "value": th["value"],
            "unit": "nats",
            "method": th.get("method"),
            "params": {k: v for k, v in (th.get("params") or {}).items() if is_scalar(v)},
        },
        "params": m.get("params"),
        "training": {
            k: training.get(k)
            for k in ("rows", "train_rows", "validation_rows", "epochs_run", "best_val_loss")
        },
        "data": m.get("data_fingerprint"),
        "model_file": m["model_file"],
        "model_sha256": m["model_sha256"],
        "verified": True,
    }


def is_scalar(value: Any) -> bool:
    """A value a summary shows as it is (a threshold's parameters hold arrays too)."""
    return value is None or isinstance(value, bool | int | float | str)


def threshold_rule(detector) -> Any:
    """The threshold object a bundle records: a `VAEDetector`'s ``threshold_rule_`` (its
    ``threshold_`` is the number, as PyOD's), a window view's ``threshold_``."""
    rule = getattr(detector, "threshold_rule_", None)
    return rule if rule is not None else detector.threshold_


def bundle_file(path: Path, m: dict[str, Any], key: str) -> Path:
    """The file a manifest field names (``model_file``: default ``model.keras``), refused
    unless it is a plain file name inside the bundle: the manifest says what to load and hash,
    so it must not reach anywhere else (``/etc/…``, ``../other-bundle/model.keras``, a
    symlink out)."""
    name = m.get(key, MODEL_FILE)
    bad = (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or os.path.isabs(name)
    )
    target = None if bad else Path(path) / name
    if target is not None and not _inside(Path(path), target):
        bad = True
    if bad:
        raise BundleError(
            f"corrupt bundle at {path}: field {key!r} must be a plain file name inside the "
            f"bundle, got {short_repr(name, 80)}"
        )
    return target


def _check_parts(path: Path, parts: Any) -> None:
    """``parts`` (optional): ``views/<k>`` → the SHA-256 of that sub-bundle's manifest."""
    if parts is None:
        return
    if not isinstance(parts, dict):
        raise BundleError(f"corrupt bundle at {path}: field 'parts' must be an object")
    for name, digest in parts.items():
        if not _PART_RE.fullmatch(name) or not _inside(Path(path), Path(path) / name):
            raise BundleError(
                f"corrupt bundle at {path}: field 'parts' names {short_repr(name, 80)}, not a part "
                "folder inside the bundle (views/<k>)"
            )
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise BundleError(
                f"corrupt bundle at {path}: field 'parts' pins {name} with {short_repr(digest, 80)}, "
                "not a SHA-256"
            )


def _check_budget(path: Path, params: dict[str, Any]) -> None:
    """A budget threshold's ``params`` are what serving re-derives it from (the alert budget,
    the fitted tail, the sorted calibration scores): they must give a finite threshold, now
    and when the tail is fitted again on them (`vaeguard.thresholds.FollowingThreshold`)."""
    from vaeguard.thresholds import fit_tail, is_budget, tail_value

    budget, tail, reference = params.get("budget"), params.get("tail"), params.get("reference")
    ok = is_budget(budget)
    ok = ok and isinstance(tail, list) and len(tail) == 4 and all(map(is_finite_number, tail))
    ok = (
        ok
        and isinstance(reference, list)
        and bool(reference)
        and all(map(is_finite_number, reference))
    )
    if ok:
        _, log10_share, shape, scale = tail
        ok = log10_share <= 0 and shape >= 0 and scale > 0
        ok = ok and all(a <= b for a, b in itertools.pairwise(reference))
    if ok:
        values = np.asarray(reference, dtype="float64")
        level = math.log10(budget / 1000.0)
        try:
            with np.errstate(all="ignore"):
                refit = fit_tail(values, 1e-6 * max(1.0, float(np.abs(values).max())))
                ok = math.isfinite(tail_value(values, tail, level)) and math.isfinite(
                    tail_value(values, refit, level)
                )
        except (ArithmeticError, ValueError):
            ok = False
    if not ok:
        raise BundleError(
            f"corrupt bundle at {path}: threshold.params of a budget threshold must hold a "
            "budget in (0, 1000), its tail fit and its sorted finite calibration scores"
        )


def _inside(root: Path, target: Path) -> bool:
    """Whether ``target`` resolves (symlinks followed) to a path inside ``root``."""
    try:
        return target.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, an odd name
        return False


def _check_plausible_range(path: Path, r: Any, n: int) -> None:
    """``plausible_range`` is optional (older bundles lack it); when present it must be sound."""
    if r is None:
        return
    ok = isinstance(r, dict)
    for key in ("low", "high"):
        values = r.get(key) if ok else None
        ok = (
            ok
            and isinstance(values, list)
            and len(values) == n
            and all(map(is_finite_number, values))
        )
    if ok and all(lo <= hi for lo, hi in zip(r["low"], r["high"], strict=True)):
        return
    raise BundleError(
        f"corrupt bundle at {path}: plausible_range must hold {n} finite low ≤ high pairs"
    )


#: The model kinds a bundle can hold (``bundle.json``'s ``kind``) and each one's reader (the
#: bundle path → the loaded model): a function, or its ``module:function``, imported on first use
#: like an entry point, so a bundle loads without its model package imported first and this
#: layer imports no model package. The readers sit with their models (see the module docstring).
_READERS: dict[str, Callable[[Path], Any] | str] = {
    "tabular": "vaeguard.detector:load_bundle",
    "window": "vaeguard.timeseries.bundle:load_window_bundle",
}


def register_kind(kind: str, reader: Callable[[Path], Any] | str) -> None:
    """Make bundles whose ``kind`` is ``kind`` load with ``reader`` (a function of the bundle
    path returning the model, or its ``module:function``): how a model package plugs its kind
    into `load_any` and `read_manifest`, as Keras's ``register_keras_serializable``."""
    if not isinstance(kind, str) or not kind:
        raise BundleError(f"a model kind must be a non-empty string, got {short_repr(kind, 80)}")
    if not callable(reader) and not (isinstance(reader, str) and ":" in reader):
        raise BundleError(
            f"the reader of model kind {kind!r} must be a function or its module:function, "
            f"got {short_repr(reader, 80)}"
        )
    _READERS[kind] = reader


def kinds() -> tuple[str, ...]:
    """The model kinds a bundle can hold: those with a reader."""
    return tuple(_READERS)


def load_any(path) -> Any:
    """Load the bundle at ``path`` as the model it holds (``kind``: a `VAEDetector` for
    ``tabular``, a `ViewSet` for ``window``), checked as that kind's reader checks it.

    Raises `BundleError` for a missing, corrupt or incompatible bundle, a kind without a reader
    among them."""
    path = Path(path)
    kind = model_kind(read_manifest(path))  # refuses a kind without a reader
    return _reader(kind, path)(path)


def _reader(kind: str, path: Path) -> Callable[[Path], Any]:
    reader = _READERS[kind]
    if isinstance(reader, str):
        module, _, name = reader.partition(":")
        try:
            reader = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise BundleError(
                f"cannot load the {kind} bundle at {path}: its reader {reader} is not "
                f"installed ({exc})"
            ) from None
    return reader


def required_fields(manifest: dict[str, Any]) -> list[str] | None:
    """The fields every row for the model must carry, as its serving lists them, read from a
    checked manifest without loading the model, so a file that lacks one is refused before
    Keras starts: a tabular model's features, then its numeric and categorical conditions; a
    window model's time field. None where the manifest does not say it as this version writes
    it (the loaded model's own check then decides)."""
    if has_window_section(manifest):
        spec = (manifest["window"].get("config") or {}).get("window")
        field = spec.get("time_field", "ts") if isinstance(spec, dict) else None
        return [field] if isinstance(field, str) else None
    if model_kind(manifest) != "tabular":
        return None
    conditions = manifest.get("conditions")
    if not isinstance(conditions, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in conditions
    ):
        return None
    by_kind = {
        kind: [c["name"] for c in conditions if c.get("kind") == kind]
        for kind in ("numeric", "categorical")
    }
    if sum(map(len, by_kind.values())) != len(conditions):
        return None
    return [*manifest["features"], *by_kind["numeric"], *by_kind["categorical"]]


def model_kind(manifest: dict[str, Any]) -> str:
    """The kind of model a manifest describes (bundles written before ``kind`` existed are
    told apart by ``extra.window_mode``)."""
    kind = manifest.get("kind")
    if kind is None:
        extra = manifest.get("extra")
        return "window" if isinstance(extra, dict) and "window_mode" in extra else "tabular"
    return kind if isinstance(kind, str) else repr(kind)


def load_model_file(path: Path, m: dict[str, Any]):
    """The VAE in the model file a checked manifest names, verified against its SHA-256."""
    from vaeguard._quiet import import_keras
    from vaeguard.model.vae import VAE

    keras = import_keras()
    model_path = bundle_file(path, m, "model_file")
    if not model_path.is_file():
        raise BundleError(f"corrupt bundle at {path}: {model_path.name} is missing")
    if sha256_file(model_path) != m["model_sha256"]:
        raise BundleError(
            f"corrupt bundle at {path}: {model_path.name} does not match its recorded SHA-256"
        )
    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        raise BundleError(
            f"corrupt bundle at {path}: cannot load {model_path.name} ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(model, VAE):
        raise BundleError(f"corrupt bundle at {path}: {model_path.name} is not a vaeguard VAE")
    return model


def _check_files(path: Path, files: Any) -> None:
    """``files`` (optional): a plain JSON file name in the bundle → the SHA-256 of its bytes."""
    if files is None:
        return
    if not isinstance(files, dict):
        raise BundleError(f"corrupt bundle at {path}: field 'files' must be an object")
    for name, digest in files.items():
        if not _FILE_RE.fullmatch(name):
            raise BundleError(
                f"corrupt bundle at {path}: field 'files' names {short_repr(name, 80)}, not a "
                "plain JSON file name"
            )
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise BundleError(
                f"corrupt bundle at {path}: field 'files' pins {name} with "
                f"{short_repr(digest, 80)}, not a SHA-256"
            )


def pinned_file(path: Path, m: dict[str, Any], name: str) -> bytes | None:
    """The bytes of data file ``name`` of the bundle at ``path`` (checked manifest ``m``), once
    they match the SHA-256 it records; None when the manifest records no such file."""
    digest = (m.get("files") or {}).get(name)
    if digest is None:
        return None
    target = Path(path) / name
    if not target.is_file() or not _inside(Path(path), target):
        raise BundleError(f"corrupt bundle at {path}: file {name!r} is missing")
    data = target.read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(
            f"corrupt bundle at {path}: file {name!r} does not match its recorded SHA-256"
        )
    return data


def pinned_part(path: Path, name: str, digest: str) -> Path:
    """The folder of part ``name`` of the bundle at ``path``, once its manifest matches the
    SHA-256 the parent records (names and pins are checked by `read_manifest`)."""
    part = path / name
    if not (part / MANIFEST_FILE).is_file():
        raise BundleError(f"corrupt bundle at {path}: part {name!r} is missing")
    if sha256_file(part / MANIFEST_FILE) != digest:
        raise BundleError(
            f"corrupt bundle at {path}: part {name!r} does not match its recorded SHA-256"
        )
    return part
