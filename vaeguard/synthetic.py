"""A realistic synthetic monitoring workload: hosts serving traffic, with labelled incidents.

Each host emits one record per tick with seven correlated metrics. Traffic follows a daily
cycle (compressed: a "day" is ``ticks_per_day`` ticks); network volume is proportional to
traffic, CPU to traffic per unit of the host's capacity, load to CPU, p99 latency grows like a
queue as CPU nears saturation, and errors follow latency. Memory wanders slowly around each
host's own level. Incidents break these relationships the way real ones do:

- ``cpu_saturation``: a runaway process pins the CPU; load and latency explode, traffic is normal.
- ``memory_leak``: memory climbs steadily towards exhaustion, with GC pressure at the end.
- ``traffic_decoupling``: network volume collapses while requests continue (truncated
  payloads): each value alone looks like a quiet night, together they are impossible.
- ``stuck_sensor``: the CPU exporter freezes at its last value while traffic moves on.
- ``error_burst``: a bad deploy: errors jump, latency degrades.

Everything is deterministic given the seed; `Incident` windows are the ground-truth labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

FEATURES = (
    "requests_per_s",
    "net_in_mbps",
    "cpu_pct",
    "load1",
    "latency_p99_ms",
    "mem_used_pct",
    "error_rate_pct",
)
INCIDENT_KINDS = (
    "cpu_saturation",
    "memory_leak",
    "traffic_decoupling",
    "stuck_sensor",
    "error_burst",
)
DESCRIPTIONS = {
    "cpu_saturation": "runaway process pins the CPU; latency explodes",
    "memory_leak": "memory climbs towards exhaustion",
    "traffic_decoupling": "network volume collapses while requests continue",
    "stuck_sensor": "CPU metric frozen while traffic moves",
    "error_burst": "bad deploy: errors jump, latency degrades",
}
#: Tick lengths of each kind of incident (min, max).
DURATIONS = {
    "cpu_saturation": (25, 50),
    "memory_leak": (70, 110),
    "traffic_decoupling": (25, 50),
    "stuck_sensor": (70, 110),
    "error_burst": (20, 40),
}
CORES = 8


@dataclass(frozen=True)
class Incident:
    kind: str
    entity: str
    start: int  # first tick, inclusive
    end: int  # last tick, exclusive

    def covers(self, tick: int) -> bool:
        return self.start <= tick < self.end

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]


class Workload:
    """``entities`` hosts (``host-01``…) with their own traffic level, capacity and memory."""

    def __init__(self, entities: int = 6, seed: int = 7, ticks_per_day: int = 480):
        if entities < 1:
            raise ValueError("entities must be at least 1")
        self.ticks_per_day = ticks_per_day
        self.seed = seed
        rng = np.random.default_rng(seed)
        self.entities = [f"host-{i + 1:02d}" for i in range(entities)]
        self.base_rps = rng.uniform(300, 600, entities)
        self.capacity = rng.uniform(0.92, 1.08, entities)  # CPU % per unit of relative traffic
        self.phase = rng.uniform(-0.3, 0.3, entities)  # time zones of their users, roughly
        self.mem_base = rng.uniform(42, 58, entities)
        self.mem_phase = rng.uniform(0, 2 * math.pi, entities)

    # -- normal behaviour ---------------------------------------------------------------------

    def _normal(self, tick: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        n = len(self.entities)
        day = 2 * math.pi * tick / self.ticks_per_day
        diurnal = 0.5 + 0.5 * np.sin(day - math.pi / 2 + self.phase)  # 0 at night, 1 at peak
        rps = self.base_rps * (0.2 + 0.8 * diurnal) * (1 + 0.04 * rng.standard_normal(n))
        relative = rps / self.base_rps
        net = rps * 0.08 * (1 + 0.03 * rng.standard_normal(n))
        cpu = 4 + 60 * relative * self.capacity + 1.5 * rng.standard_normal(n)
        cpu = np.clip(cpu, 0.5, 99.5)
        load = CORES * cpu / 100 * (1 + 0.06 * rng.standard_normal(n)) + 0.05 * np.abs(
            rng.standard_normal(n)
        )
        latency = _latency(cpu, rng)
        mem = (
            self.mem_base
            + 3 * np.sin(2 * math.pi * tick / (3 * self.ticks_per_day) + self.mem_phase)
            + 0.7 * rng.standard_normal(n)
        )
        errors = 0.05 + 0.0015 * latency + 0.03 * np.abs(rng.standard_normal(n))
        return {
            "requests_per_s": rps,
            "net_in_mbps": net,
            "cpu_pct": cpu,
            "load1": load,
            "latency_p99_ms": latency,
            "mem_used_pct": mem,
            "error_rate_pct": errors,
        }

    def history(self, start: int, ticks: int, seed: int | None = None) -> dict[str, np.ndarray]:
        """Normal data only, as columns (for training and calibration)."""
        rng = np.random.default_rng(self.seed * 1000 + 1 if seed is None else seed)
        cols: dict[str, list[np.ndarray]] = {f: [] for f in FEATURES}
        for tick in range(start, start + ticks):
            values = self._normal(tick, rng)
            for f in FEATURES:
                cols[f].append(values[f])
        return {f: np.concatenate(v) for f, v in cols.items()}

    # -- incidents ------------------------------------------------------------------------------

    def schedule(
        self,
        start: int,
        ticks: int,
        per_entity: int = 2,
        lead_in: int = 60,
        kinds: Sequence[str] = INCIDENT_KINDS,
        seed: int | None = None,
    ) -> list[Incident]:
        """Non-overlapping incidents per host, every kind used about equally often."""
        rng = np.random.default_rng(self.seed * 1000 + 2 if seed is None else seed)
        incidents: list[Incident] = []
        order = list(kinds)
        rng.shuffle(order)
        k = 0
        for entity in self.entities:
            slot = (ticks - lead_in) // per_entity
            for j in range(per_entity):
                kind = order[k % len(order)]
                k += 1
                low, high = DURATIONS[kind]
                duration = int(rng.integers(low, high + 1))
                duration = min(duration, slot - 10)
                if duration < 10:
                    continue
                first = start + lead_in + j * slot
                candidates = first + np.arange(0, max(1, slot - duration - 10))
                if kind == "stuck_sensor":
                    # A frozen metric is only visible once the truth moves away from it: put it
                    # where traffic changes (a daily ramp), as an SRE would notice it too.
                    change = np.array([self._traffic_change(int(c), duration) for c in candidates])
                    candidates = candidates[change >= np.quantile(change, 0.7)]
                begin = int(rng.choice(candidates))
                incidents.append(Incident(kind, entity, begin, begin + duration))
        return sorted(incidents, key=lambda i: (i.start, i.entity))

    def _traffic_change(self, tick: int, duration: int) -> float:
        day = 2 * math.pi / self.ticks_per_day
        a = np.sin(tick * day - math.pi / 2 + self.phase)
        b = np.sin((tick + duration) * day - math.pi / 2 + self.phase)
        return float(np.min(np.abs(b - a)))

    def stream(
        self, start: int, ticks: int, incidents: Sequence[Incident] = (), seed: int | None = None
    ) -> Iterator[tuple[int, list[dict[str, float | str | int]]]]:
        """(tick, one record per host) for each tick, with the incidents applied."""
        rng = np.random.default_rng(self.seed * 1000 + 3 if seed is None else seed)
        index = {e: i for i, e in enumerate(self.entities)}
        frozen: dict[tuple[str, int], float] = {}
        last_cpu = np.zeros(len(self.entities))
        for tick in range(start, start + ticks):
            values = self._normal(tick, rng)
            for inc in incidents:
                if inc.covers(tick):
                    i = index[inc.entity]
                    if inc.kind == "stuck_sensor":
                        key = (inc.entity, inc.start)
                        frozen.setdefault(key, float(last_cpu[i]))
                        values["cpu_pct"][i] = frozen[key]
                    else:
                        _apply(inc, tick, i, values, rng)
            last_cpu = values["cpu_pct"].copy()
            records = []
            for i, entity in enumerate(self.entities):
                record: dict[str, float | str | int] = {
                    f: round(float(values[f][i]), 3) for f in FEATURES
                }
                record["key"] = entity
                record["tick"] = tick
                records.append(record)
            yield tick, records


def _latency(cpu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u = np.clip(cpu / 100, 0, 0.985)
    return (35 + 22 * u / (1 - u)) * (1 + 0.06 * rng.standard_normal(cpu.shape))


def _apply(inc: Incident, tick: int, i: int, v: dict[str, np.ndarray], rng) -> None:
    progress = (tick - inc.start) / max(1, inc.end - inc.start)
    if inc.kind == "cpu_saturation":
        cpu = 96 + 3 * rng.random()
        v["cpu_pct"][i] = cpu
        v["load1"][i] = CORES * 0.99 + 4 + 3 * rng.random()  # a run queue builds up
        v["latency_p99_ms"][i] = _latency(np.array([cpu]), rng)[0]
        v["error_rate_pct"][i] += 0.0015 * v["latency_p99_ms"][i]
    elif inc.kind == "memory_leak":
        start = v["mem_used_pct"][i]
        v["mem_used_pct"][i] = start + (97 - start) * min(1.0, 0.15 + progress)
        if progress > 0.6:  # the garbage collector starts to fight
            v["cpu_pct"][i] = min(99.0, v["cpu_pct"][i] + 15 * (progress - 0.6) / 0.4)
            v["latency_p99_ms"][i] *= 1 + 1.5 * (progress - 0.6) / 0.4
    elif inc.kind == "traffic_decoupling":
        v["net_in_mbps"][i] *= 0.12 + 0.04 * rng.random()
    elif inc.kind == "error_burst":
        v["error_rate_pct"][i] = 4 + 6 * rng.random()
        v["latency_p99_ms"][i] *= 1.4
