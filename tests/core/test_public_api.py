"""The public API: flat exports from `vaeguard` and `vaeguard.alerts`, one errors module.

A user imports what they need from ``vaeguard``, a sink plugin author from ``vaeguard.alerts``;
every public exception lives in `vaeguard.errors` under `VaeguardError`, so one ``except`` (and
the CLI's one-line error) covers them all, while the old import locations keep working.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest
from prometheus_client import REGISTRY

import vaeguard
import vaeguard.alerts
from vaeguard import errors

PACKAGES = [vaeguard, vaeguard.alerts]


def _exports():
    return [(pkg, name) for pkg in PACKAGES for name in pkg.__all__]


@pytest.mark.parametrize(("pkg", "name"), _exports(), ids=lambda v: getattr(v, "__name__", v))
def test_every_export_is_the_object_at_its_home_module(pkg, name):
    value = getattr(pkg, name)
    if name == "__version__":
        from vaeguard._version import __version__

        assert value == __version__
        return
    home = importlib.import_module(value.__module__)
    assert getattr(home, value.__name__) is value
    assert value.__name__ == name


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.__name__)
def test_star_import_gives_all_names(pkg):
    namespace: dict = {}
    exec(f"from {pkg.__name__} import *", namespace)
    assert set(pkg.__all__) <= set(namespace)
    assert sorted(pkg.__all__) == pkg.__all__  # kept sorted, so a diff shows what changed
    assert set(pkg.__all__) <= set(dir(pkg))


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = vaeguard.nope
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = vaeguard.alerts.nope


def test_import_vaeguard_stays_light():
    """The lazy names are not imported by ``import vaeguard`` (the CLI pays only for what it
    uses): no TensorFlow, Keras, pydantic or the registry/bundle/serving modules."""
    code = (
        "import sys, vaeguard, vaeguard.alerts\n"
        "heavy = ['tensorflow', 'keras', 'pydantic', 'httpx', 'vaeguard.registry',"
        " 'vaeguard.bundle', 'vaeguard.serving.loader', 'vaeguard.timeseries.views',"
        " 'vaeguard.alerts.sink', 'vaeguard.alerts.model']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _all_modules():
    """Every module of the package, imported. None fails today; a module that needs an optional
    extra that is not installed would be skipped, not failed."""
    modules, skipped = [], []
    for info in pkgutil.walk_packages(vaeguard.__path__, "vaeguard."):
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "vaeguard":
                raise
            skipped.append(info.name)
    return modules, skipped


def _exception_classes():
    modules, _ = _all_modules()
    found = {}
    for module in [vaeguard, *modules]:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("vaeguard"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_public_exception_is_a_vaeguard_error_defined_in_errors():
    found = _exception_classes()
    public = {k: v for k, v in found.items() if not v.__name__.startswith("_")}
    assert {k for k, v in public.items() if not issubclass(v, errors.VaeguardError)} == set()
    assert {k for k in public if not k.startswith("vaeguard.errors.")} == set()
    # every error of errors.py is exported from the top
    assert {v.__name__ for v in public.values()} <= set(vaeguard.__all__)
    # private control-flow exceptions may live where they are used
    assert {k for k in found if k not in public} == {"vaeguard.ingest._Refused"}


@pytest.mark.parametrize(
    ("old_home", "name"),
    [
        ("vaeguard.alerts.sink", "SinkError"),
        ("vaeguard.alerts.sink", "RetryableSinkError"),
        ("vaeguard.alerts.sink", "PermanentSinkError"),
        ("vaeguard.alerts.sink", "UndeliverableAlertError"),
        ("vaeguard.alerts.spool", "SpoolError"),
        ("vaeguard.alerts.layer", "AlertDeliveryError"),
        ("vaeguard.registry", "RegistryError"),
        ("vaeguard.registry", "VersionNameError"),
        ("vaeguard.daemon.checkpoint", "StateRefused"),
        ("vaeguard.daemon.pipeline", "ShutdownExpired"),
        ("vaeguard.retrain.job", "RetrainRefused"),
        ("vaeguard.retrain.job", "RetrainRejected"),
    ],
)
def test_moved_errors_are_still_importable_from_their_old_home(old_home, name):
    assert getattr(importlib.import_module(old_home), name) is getattr(errors, name)


def test_errors_keep_their_bases_and_attributes():
    """What callers catch and read did not change with the move."""
    assert issubclass(errors.StateRefused, errors.DataError)
    assert issubclass(errors.StateRefused, ValueError)
    refused = errors.StateRefused("window-state", "bad mac")
    assert (refused.kind, str(refused)) == ("window-state", "bad mac")
    assert issubclass(errors.VersionNameError, errors.RegistryError)
    assert issubclass(errors.LockHeld, errors.RegistryError)
    assert issubclass(errors.UndeliverableAlertError, errors.PermanentSinkError)
    assert issubclass(errors.RetryableSinkError, errors.SinkError)
    assert not issubclass(errors.SinkError, ValueError | TypeError)  # else it would dead-letter
    assert errors.SinkError("x", retry_after=3.0).retry_after == 3.0
    assert (errors.SinkError.retryable, errors.PermanentSinkError.retryable) == (True, False)
    exit_codes = {
        errors.VaeguardError: 1,
        errors.ConfigError: 2,
        errors.VersionNameError: 2,
        errors.RetrainRefused: 3,
        errors.RetrainRejected: 4,
        errors.SinkError: 1,
        errors.LockHeld: 1,
    }
    assert {cls: cls.exit_code for cls in exit_codes} == exit_codes


def test_sink_errors_are_vaeguard_errors():
    from vaeguard.alerts.sink import SinkError

    assert issubclass(SinkError, vaeguard.VaeguardError)


# -- the registry's lock ---------------------------------------------------------------------


def test_a_held_registry_lock_raises_lock_held(tmp_path):
    """flock locks belong to the open file: a second non-blocking take is refused even from the
    same thread, as it would be from another process (tests/registry covers processes)."""
    from vaeguard.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg", create=True)
    with reg.lock("retrain"):
        with (
            pytest.raises(errors.LockHeld, match="the retrain lock is held by another process"),
            reg.lock("retrain", blocking=False),
        ):
            pass
        with reg.lock("registry", blocking=False):  # the other lock is free
            pass
    with reg.lock("retrain", blocking=False):
        pass


def _failed_runs() -> float:
    return REGISTRY.get_sample_value("vaeguard_retrain_runs_total", {"outcome": "failed"}) or 0.0


def _job(reg):
    from vaeguard.retrain.job import RetrainJob
    from vaeguard.retrain.settings import RetrainSettings

    # No broker: neither branch below gets as far as reading Kafka.
    return RetrainJob(
        reg, RetrainSettings(window="1h"), {"bootstrap_servers": "127.0.0.1:9"}, ["t"]
    )


def test_retrain_job_reports_a_held_lock_as_refused(tmp_path):
    from vaeguard.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg", create=True)
    with reg.lock("retrain"):
        outcome = _job(reg).run()
    assert (outcome.status, outcome.current) == ("refused", None)
    assert outcome.reasons == ["another retraining job is running"]


def test_retrain_job_lets_other_registry_errors_through_uncounted(tmp_path):
    """An empty registry is a RegistryError that is not the lock's: raised, as before."""
    from vaeguard.registry import ModelRegistry

    reg = ModelRegistry(tmp_path / "reg", create=True)
    failed = _failed_runs()
    with pytest.raises(errors.RegistryError, match="has no current version yet") as caught:
        _job(reg).run()
    assert not isinstance(caught.value, errors.LockHeld)
    assert _failed_runs() == failed
