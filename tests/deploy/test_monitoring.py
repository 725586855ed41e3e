"""The ops mixin in deploy/monitoring: rules and dashboard name only what the daemon exports.

The exported catalogue is read from the metric objects themselves (the modules that define
them are cheap to import: no Kafka, no Keras), and an AST scan of vaeguard/ makes sure no
module defining a metric is missing from it. promtool checks and unit-tests the rules; without
it these tests skip, except where VAEGUARD_REQUIRE_PROMTOOL=1 (CI), where they fail.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "vaeguard-rules.yml"
RULES_TEST = MONITORING / "vaeguard-rules.test.yml"
DASHBOARD = MONITORING / "vaeguard-dashboard.json"
#: The modules that define the daemon's metrics (checked complete by test_catalogue_complete).
METRIC_MODULES = (
    "vaeguard.daemon.metrics",
    "vaeguard.alerts.metrics",
    "vaeguard.retrain.job",
)
#: Labels Prometheus or the multiprocess collector add to every series.
TARGET_LABELS = frozenset({"job", "instance", "pid"})
#: Series a Prometheus server makes itself.
BUILTIN_SERIES = {"up": frozenset({"job", "instance"})}
METRIC_CONSTRUCTORS = frozenset(
    {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
    | {f"{t}MetricFamily" for t in ("Counter", "Gauge", "Histogram", "Summary", "Info")}
)
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
}


@dataclass
class Series:
    labels: frozenset[str]
    #: label → the values the code creates up front (only labels it enumerates).
    values: dict[str, set[str]] = field(default_factory=dict)


def _families() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, type, label names) of every metric family the daemon registers."""
    from prometheus_client.metrics import MetricWrapperBase

    from vaeguard.daemon.supervisor import _Restarts

    families = []
    for name in METRIC_MODULES:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                (desc,) = obj.describe()
                families.append((desc.name, desc.type, tuple(obj._labelnames)))
    for desc in _Restarts([]).collect():  # the supervisor's own collector
        families.append((desc.name, desc.type, tuple(desc._labelnames)))
    return families


def _catalogue(families) -> dict[str, Series]:
    """Every sample name the daemon's /metrics can show, with its labels."""
    from prometheus_client import REGISTRY

    out: dict[str, Series] = {}
    for family, kind, labels in families:
        for suffix in SAMPLE_SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            out[family + suffix] = Series(frozenset(labels) | extra)
    for metric in REGISTRY.collect():  # the label values the code creates at import
        for sample in metric.samples:
            if sample.name in out:
                for label, value in sample.labels.items():
                    out[sample.name].values.setdefault(label, set()).add(value)
    for name, labels in BUILTIN_SERIES.items():
        out[name] = Series(labels)
    return out


FAMILIES = _families()
CATALOGUE = _catalogue(FAMILIES)


def _ast_metric_names() -> set[str]:
    """Names of every metric constructed anywhere in vaeguard/ (first argument a literal)."""
    names = set()
    for path in (ROOT / "vaeguard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                callee in METRIC_CONSTRUCTORS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value.startswith("vaeguard_")
            ):
                names.add(first.value)
    return names


def test_catalogue_complete():
    """A metric defined in a module METRIC_MODULES misses would escape the name checks."""
    defined = {name.removesuffix("_total") for name in _ast_metric_names()}
    registered = {name for name, _, _ in FAMILIES}
    assert len(defined) > 40, "the AST scan finds too few metrics: it is broken"
    assert defined <= registered, f"add their modules to METRIC_MODULES: {defined - registered}"


def test_catalogue_matches_exposition():
    """The sample names derived from metric types are the ones /metrics really shows."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    shown = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())
        for sample in family.samples
        if sample.name.startswith("vaeguard_")
    }
    assert len(shown) > 20
    assert shown <= CATALOGUE.keys(), shown - CATALOGUE.keys()


# -- PromQL checks ---------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _names(expr: str) -> set[str]:
    """Series names in an expression: vaeguard's and recorded ones (strings stripped)."""
    bare = _STRING.sub('""', expr)
    return {t for t in _IDENT.findall(bare) if "vaeguard" in t or t in BUILTIN_SERIES}


def _recorded(rules: dict) -> dict[str, str]:
    return {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def check_expr(expr: str, recorded: dict[str, str]) -> list[str]:
    """What in `expr` the code does not export: names, label names, enumerated label values."""
    errors = []
    labels_of: dict[str, frozenset[str]] = {}
    for name in _names(expr):
        if name in CATALOGUE:
            labels_of[name] = CATALOGUE[name].labels
        elif ":" in name and name in recorded:
            labels_of[name] = _recorded_labels(recorded[name], recorded)
        else:
            errors.append(f"{name}: not exported by vaeguard (nor recorded by the rules)")
    for name, body in _SELECTOR.findall(expr):
        if name not in labels_of:
            continue
        for label, op, value in _MATCHER.findall(body):
            if label not in labels_of[name] | TARGET_LABELS:
                errors.append(f"{name}: no label {label!r}")
            known = CATALOGUE[name].values.get(label) if name in CATALOGUE else None
            if op == "=" and known and value not in known:
                errors.append(f"{name}: {label}={value!r} never exported (only {sorted(known)})")
    usable = frozenset().union(*labels_of.values()) | TARGET_LABELS
    for _, group in _GROUPING.findall(_STRING.sub('""', expr)):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if label not in usable:
                errors.append(f"grouping by {label!r}: no series in the expression has it")
    return errors


def _recorded_labels(expr: str, recorded: dict[str, str]) -> frozenset[str]:
    """A recorded series keeps the labels of its outermost `by (...)`, else of its inputs."""
    match = re.match(r"\s*\w+\s+by\s*\(([^)]*)\)", expr) or re.match(
        r"\s*histogram_quantile\([^,]*,\s*sum\s+by\s*\(([^)]*)\)", expr
    )
    if match:
        return frozenset(x.strip() for x in match.group(1).split(",")) - {"le"}
    inputs = [n for n in _names(expr)]
    out = frozenset()
    for name in inputs:
        out |= (
            CATALOGUE[name].labels
            if name in CATALOGUE
            else _recorded_labels(recorded.get(name, ""), recorded)
        )
    return out


def _load_rules() -> dict:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def _alerts(rules: dict) -> list[dict]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


def _dashboard_module():
    spec = importlib.util.spec_from_file_location("vaeguard_dashboard", MONITORING / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_rules_use_only_exported_metrics():
    rules = _load_rules()
    recorded = _recorded(rules)
    errors = [
        f"{r.get('record') or r.get('alert')}: {e}"
        for g in rules["groups"]
        for r in g["rules"]
        for e in check_expr(r["expr"], recorded)
    ]
    assert not errors, "\n".join(errors)


def test_dashboard_uses_only_exported_metrics():
    recorded = _recorded(_load_rules())
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    errors = [f"{e}: {err}" for e in _dashboard_exprs(dashboard) for err in check_expr(e, recorded)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "expr",
    [
        "rate(vaeguard_records_consumd_total[5m])",  # a typo in the name
        "vaeguard_records_consumed",  # the counter's family name, not a sample name
        "sum by (sink_name) (vaeguard_sink_alerts_sent_total)",  # no such label
        'vaeguard_sink_alerts_sent_total{sink_name="x"}',
        'vaeguard_window_refits_total{result="fail"}',  # a value the code never sets
        'vaeguard_records_dead_lettered_total{reason="bad_json"}',
        "instance:vaeguard_records_eaten:rate5m",  # a recording rule that does not exist
    ],
)
def test_check_rejects(expr):
    """The name check has teeth: each of these is a mistake it must report."""
    assert check_expr(expr, _recorded(_load_rules()))


def test_dashboard_is_generated():
    """The committed JSON is what dashboard.py writes: edit the script, not the JSON."""
    assert DASHBOARD.read_text(encoding="utf-8") == _dashboard_module().render(), (
        "run python deploy/monitoring/dashboard.py"
    )


def test_dashboard_shape():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"job", "instance"} <= variables.keys()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert 'job=~"$job", instance=~"$instance"' in t["expr"], (panel["title"], t["expr"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_alerts_are_documented():
    """Severity, summary, description (threshold and for: stated), runbook hint."""
    for alert in _alerts(_load_rules()):
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        notes = alert["annotations"]
        assert {"summary", "description", "runbook"} <= notes.keys(), name
        assert "threshold:" in notes["description"], name
        if "for" in alert:
            amount, unit = re.fullmatch(r"(\d+)([mh])", alert["for"]).groups()
            words = {"m": "minute", "h": "hour"}[unit] + ("s" if amount != "1" else "")
            assert f"{amount} {words}" in " ".join(notes["description"].split()), name


def test_every_alert_is_unit_tested():
    """Each alert fires in some promtool test and is silent in another."""
    tests = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    fired, silent = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case["exp_alerts"] else silent).add(case["alertname"])
    names = {a["alert"] for a in _alerts(_load_rules())}
    assert names - fired == set(), "never shown firing"
    assert names - silent == set(), "never shown silent"


# -- promtool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("VAEGUARD_PROMTOOL") or shutil.which("promtool")
    if found and Path(found).is_file():
        return found
    if os.environ.get("VAEGUARD_REQUIRE_PROMTOOL") == "1":
        pytest.fail(
            "promtool not found (VAEGUARD_PROMTOOL or PATH) and VAEGUARD_REQUIRE_PROMTOOL=1"
        )
    pytest.skip("promtool not found: set VAEGUARD_PROMTOOL or put it on PATH")


def _promtool(promtool: str, *args: str, cwd: Path = MONITORING) -> str:
    proc = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def test_promtool_check_rules(promtool):
    assert "SUCCESS" in _promtool(promtool, "check", "rules", RULES.name)


def test_promtool_test_rules(promtool):
    assert "SUCCESS" in _promtool(promtool, "test", "rules", RULES_TEST.name)


def test_dashboard_promql_parses(promtool, tmp_path):
    """Every dashboard query is valid PromQL (checked as the expression of a recording rule)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        e.replace("$__rate_interval", "5m")
        for e in _dashboard_exprs(dashboard)
        if not e.startswith("label_values(")
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    _promtool(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
