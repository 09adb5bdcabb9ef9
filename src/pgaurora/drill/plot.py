"""The drill's timeline as a PNG: write and read throughput, client errors, each fault and its phases."""

from __future__ import annotations

from pathlib import Path

from .report import Report
from .workload import Log

BIN = 0.25  # seconds per throughput bar


def _rate(times: list[float], start: float, end: float) -> tuple[list[float], list[float]]:
    bins = int((end - start) / BIN) + 1
    counts = [0] * bins
    for t in times:
        if start <= t <= end:
            counts[int((t - start) / BIN)] += 1
    return [i * BIN for i in range(bins)], [c / BIN for c in counts]


def draw(report: Report, log: Log, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    acks, reads, failures = list(log.acks), list(log.reads), list(log.failures)
    start = min([a.at for a in acks] + [r.at for r in reads] or [0.0])
    end = max([a.at for a in acks] + [r.at for r in reads] + [f.at for f in failures] or [start + 1])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 7), sharex=True, height_ratios=[3, 1])
    for times, label, color in (
        ([a.at for a in acks], "writes/s", "tab:blue"),
        ([r.at for r in reads], "reads/s", "tab:green"),
    ):
        x, y = _rate(times, start, end)
        top.plot(x, y, label=label, color=color, linewidth=0.8)
    for role, color in (("write", "tab:red"), ("read", "tab:orange")):
        xs = [f.at - start for f in failures if f.role == role]
        bottom.scatter(xs, [role] * len(xs), s=8, color=color, label=f"{role} errors")
    for r in report.rounds:
        at = r.at - start
        top.axvline(at, color="black", linewidth=1)
        top.annotate(
            f"{r.fault} #{r.round}",
            (at, 1),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )
        for phase, style in (("detected", ":"), ("promoted", "--"), ("dns_updated", "-."), ("writer_available", "-")):
            value = getattr(r, phase)
            if value is not None:
                top.axvline(
                    at + value,
                    color="tab:purple",
                    linestyle=style,
                    linewidth=0.8,
                    label=phase.replace("_", " ") if r is report.rounds[0] else None,
                )
    top.set_ylabel("operations per second")
    top.set_title(
        f"pgaurora drill: {len(report.rounds)} faults, {len(acks)} acknowledged writes, "
        f"{report.consistency.lost} lost, {report.consistency.split_brain} split-brain"
    )
    top.legend(loc="lower right", fontsize=8)
    bottom.set_xlabel("seconds since the drill began")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
