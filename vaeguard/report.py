"""PNG pictures of a model, because people would rather look than read.

training.png   the ELBO's reconstruction and KL terms per epoch (train and validation)
scores.png     the score histogram with the threshold (normal vs anomalous when labelled)
latent.png     the latent means in 2-D (PCA when latent_dim > 2), coloured by label
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[float]], out: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, term, title in (
        (axes[0], "reconstruction", "Reconstruction (Gaussian NLL, nats)"),
        (axes[1], "kl", "KL(q(z|x) ‖ N(0, I)), nats"),
    ):
        for key, style in ((term, "-"), (f"val_{term}", "--")):
            if history.get(key):
                ax.plot(
                    np.arange(1, len(history[key]) + 1),
                    history[key],
                    style,
                    label="validation" if key.startswith("val_") else "train",
                )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def score_histogram(
    scores: np.ndarray, threshold: float, out: Path, labels: np.ndarray | None = None
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    finite = scores[np.isfinite(scores)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    hi = max(hi, threshold)
    bins = np.linspace(lo, hi + 0.05 * (hi - lo + 1e-9), 60)
    clipped = np.clip(scores, bins[0], bins[-1])
    if labels is None:
        ax.hist(clipped, bins=bins, color="tab:blue", alpha=0.8, label="rows")
    else:
        ax.hist(clipped[labels == 0], bins=bins, color="tab:blue", alpha=0.7, label="normal")
        ax.hist(clipped[labels == 1], bins=bins, color="tab:red", alpha=0.7, label="anomalous")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("anomaly score (−log reconstruction probability, nats; tails clipped)")
    ax.set_ylabel("rows")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def latent_map(z_mean: np.ndarray, out: Path, labels: np.ndarray | None = None) -> Path:
    plt = _pyplot()
    if z_mean.shape[1] > 2:
        centered = z_mean - z_mean.mean(axis=0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        points, axis_names = centered @ vt[:2].T, ("PC 1", "PC 2")
    elif z_mean.shape[1] == 2:
        points, axis_names = z_mean, ("z₁", "z₂")
    else:
        points, axis_names = np.c_[z_mean[:, 0], np.zeros(len(z_mean))], ("z₁", "")
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, color="tab:blue")
    else:
        for value, color, name in ((0, "tab:blue", "normal"), (1, "tab:red", "anomalous")):
            sel = labels == value
            ax.scatter(
                points[sel, 0],
                points[sel, 1],
                s=8 if value else 5,
                alpha=0.8 if value else 0.4,
                color=color,
                label=name,
            )
        ax.legend()
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title("Latent means μ(x)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(detector, out_dir, data=None, labels: np.ndarray | None = None) -> list[Path]:
    """All pictures for a detector; the score and latent pictures need data."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if detector.history_:
        written.append(training_curves(detector.history_, out_dir / "training.png"))
    if data is not None:
        scores = detector.decision_function(data)
        written.append(score_histogram(scores, detector.threshold, out_dir / "scores.png", labels))
        z_mean, _ = detector.encode(data)
        written.append(latent_map(z_mean, out_dir / "latent.png", labels))
    else:
        ref = np.asarray(detector.score_reference_)
        written.append(score_histogram(ref, detector.threshold, out_dir / "scores.png"))
    return written
