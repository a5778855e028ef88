"""``--plot``: latency percentiles against achieved throughput across the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fusionserve.loadtest.stats import PERCENTILES, RunSummary


def plot(summaries: Sequence[RunSummary], path: Path, title: str = "") -> Path:
    """A PNG (matplotlib, Agg: no display needed): a line per percentile, a point per run."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'matplotlib>=3.8'") from exc
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = [s for s in summaries if s.latency_ms["p50"] is not None]  # in sweep order
    x = [s.throughput_rps for s in points]
    for p, marker in zip(PERCENTILES, "o^s", strict=True):
        ax.plot(x, [s.latency_ms[f"p{p}"] for s in points], marker=marker, label=f"p{p}")
    for s in points:
        ax.annotate(
            s.label,
            (s.throughput_rps, s.latency_ms["p50"] or 0.0),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    ax.set_xlabel("achieved throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    p50s = [s.latency_ms["p50"] or 0.0 for s in points]
    p99s = [s.latency_ms["p99"] or 0.0 for s in points]
    if points and min(p50s) > 0 and max(p99s) / min(p50s) > 20:  # a wide range: log scale
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title or "fusionserve loadtest")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
