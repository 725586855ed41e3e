"""The `retrain:` section of the settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vaeguard.retrain.durations import looks_like_duration, parse_duration


class RetrainSettings(BaseModel):
    """When and how the model is retrained, and what a candidate must pass to be promoted."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False, description="Run the retraining job inside the daemon on `schedule`."
    )
    schedule: str = Field(
        "24h", description="A cron expression ('0 3 * * *') or an interval ('6h')."
    )
    window: str = Field(
        "24h", description="How far back to read the input topics for training data."
    )
    min_records: int = Field(1000, ge=16, description="Refuse to train on fewer usable records.")
    max_records: int = Field(
        200_000, ge=16, description="Read at most this many (the most recent)."
    )
    max_anomalous_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Refuse when the current model flags more of the window than this: an incident must not become the new normal.",
    )
    holdout_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="The most recent share of the window, held out for the gate."
    )
    fpr_tolerance: float = Field(
        2.0,
        ge=0,
        description="Gate: the candidate's false-positive rate on the holdout may be at most target × (1 + this) plus two binomial standard errors.",
    )
    score_margin: float = Field(
        1.0,
        ge=0,
        description="Gate: the candidate's median holdout score may exceed the current model's by at most this many nats.",
    )
    epochs: int | None = Field(
        None, ge=1, description="Override the epochs of the current model's parameters."
    )
    warm_start: bool = Field(
        True, description="Start from the current weights when the shapes match."
    )
    state_dir: str | None = Field(
        None,
        description="Folder of the scheduler's SQLite job store, which holds schedule times only, "
        "never code (its file: scheduler.sqlite; null: $XDG_STATE_HOME/vaeguard, else "
        "~/.local/state/vaeguard, the file named <kafka.group_id>.scheduler.sqlite). Keep it "
        "outside the registry; the folder is made 0700, the file 0600.",
    )
    misfire_grace_s: float = Field(
        3600, gt=0, description="A run missed by up to this long is caught up (once)."
    )
    drift_psi_threshold: float | None = Field(
        0.25,
        gt=0,
        description="Retrain early when the live score distribution's PSI against training exceeds this (null: never).",
    )
    drift_min_records: int = Field(
        2000, ge=100, description="Live records needed before drift is judged."
    )
    drift_window_records: int = Field(
        10_000, ge=100, description="Drift compares the most recent this-many live scores."
    )
    drift_cooldown_s: float = Field(
        3600, gt=0, description="At most one drift-triggered retrain per this many seconds."
    )
    poll_timeout_s: float = Field(
        10.0, gt=0, description="Give up reading the window after this long without new records."
    )
    max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Keep at most this many bytes of raw record values (the most recent), "
        "so that the window held in memory is bounded whatever the record size.",
    )
    max_categories: int = Field(
        100,
        ge=2,
        description="A categorical condition keeps its most frequent values, this many columns "
        "at most; the rarer ones, and those first seen after training, share an 'other' column.",
    )

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if looks_like_duration(value):
            return value
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is neither an interval (6h) nor a cron expression (0 3 * * *): {exc}"
            ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RetrainSettings:
        if self.max_records < self.min_records:
            raise ValueError(f"max_records: must be at least min_records ({self.min_records})")
        if self.drift_window_records < self.drift_min_records:
            raise ValueError(
                f"drift_window_records: must be at least drift_min_records ({self.drift_min_records})"
            )
        return self

    @property
    def window_seconds(self) -> float:
        return parse_duration(self.window)
