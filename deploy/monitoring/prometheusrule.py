"""Generate the PrometheusRule (Prometheus Operator) that carries vaeguard-rules.yml.

The rules live in one file, vaeguard-rules.yml (loaded by `rule_files:`, tested with
`promtool test rules`); ../kubernetes/base/prometheusrule.yaml wraps the same groups for a
cluster run by the Prometheus Operator. Run `python deploy/monitoring/prometheusrule.py` after
editing the rules; `--check` exits 1 when the wrapper is out of date (tests/deploy runs the same
comparison, so the two never diverge). The rules' text is copied as it is (comments and block
scalars kept), indented under ``spec:``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The shared command line of the generated files, next to this one.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _generated as generated

RULES = Path(__file__).with_name("vaeguard-rules.yml")
OUT = Path(__file__).resolve().parents[1] / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/monitoring/vaeguard-rules.yml by deploy/monitoring/prometheusrule.py:
# edit the rules there, then run `python deploy/monitoring/prometheusrule.py`.
# Prometheus Operator (monitoring.coreos.com/v1), like servicemonitor.yaml: without the operator,
# remove both from kustomization.yaml and load vaeguard-rules.yml with `rule_files:` instead.
# Your Prometheus may select rules by a label (kube-prometheus-stack: `release: <its release
# name>`): add it with `labels:` in your kustomization, not here.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: vaeguard
  labels:
    app.kubernetes.io/name: vaeguard
    app.kubernetes.io/component: monitoring
spec:
"""


def render() -> str:
    """The wrapper: the header, then the rules file from its ``groups:`` line on, indented."""
    lines = RULES.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = [("  " + line) if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> int:
    return generated.main(render, OUT, __file__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
