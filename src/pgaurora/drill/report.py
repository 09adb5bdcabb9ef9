"""What a drill measured: one RoundResult per fault and round, a summary per fault, JSON and tables."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field

from rich.table import Table

PHASES = (
    "write_downtime",
    "read_downtime",
    "detected",
    "promoted",
    "dns_updated",
    "writer_available",
    "redundant_again",
)


@dataclass
class RoundResult:
    """Seconds are measured from the moment of the fault."""

    fault: str
    round: int
    at: float  # wall-clock time of the fault
    node: str  # the node the fault hit
    outcome: str  # e.g. "failover n1 -> n2", "no failover: n1 stayed writer"
    write_downtime: float | None = None  # last acknowledged write before the fault to the first after it
    read_downtime: float | None = None
    detected: float | None = None  # from the failover or switchover event's phases
    promoted: float | None = None
    dns_updated: float | None = None
    writer_available: float | None = None  # the first acknowledged write on the new writer
    redundant_again: float | None = None  # every node back, streaming or writing, and commits on every copy
    lost: int = 0  # acknowledged writes missing on the writer at the end of the round
    errors: dict[str, int] = field(default_factory=dict)  # client errors by SQLSTATE
    dropped: int = 0  # client connections that ended with an error (a pooled client's may go on)
    longest_wait: float | None = None  # the longest write or read that began after the fault and succeeded
    reads_by_node: dict[str, int] = field(default_factory=dict)  # read spread: which nodes answered reads


@dataclass
class Consistency:
    """The end of the drill: every acknowledged row on every node, and at most one writer at a time."""

    acknowledged: int = 0
    final_writer: str = ""
    missing: dict[str, int] = field(default_factory=dict)  # node -> acknowledged rows it lacks
    duplicates: int = 0  # rows inserted twice (a retried insert whose first attempt had committed)
    split_brain: int = 0  # acknowledged writes on a timeline older than one already acknowledged

    @property
    def lost(self) -> int:
        return self.missing.get(self.final_writer, 0)


@dataclass
class Report:
    rounds: list[RoundResult] = field(default_factory=list)
    consistency: Consistency = field(default_factory=Consistency)
    wall_seconds: float = 0.0

    def summary(self) -> dict[str, dict]:
        out = {}
        for fault in dict.fromkeys(r.fault for r in self.rounds):
            mine = [r for r in self.rounds if r.fault == fault]
            stats = {}
            for phase in PHASES:
                values = [getattr(r, phase) for r in mine if getattr(r, phase) is not None]
                if values:
                    stats[phase] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
            errors = sum((Counter(r.errors) for r in mine), Counter())
            waits = [r.longest_wait for r in mine if r.longest_wait is not None]
            out[fault] = {
                "rounds": len(mine),
                "phases": stats,
                "lost": sum(r.lost for r in mine),
                "errors": dict(errors),
                "dropped": sum(r.dropped for r in mine),
                "longest_wait": max(waits, default=None),
            }
        return out

    def worst_downtime(self) -> float:
        values = [v for r in self.rounds for v in (r.write_downtime, r.read_downtime) if v is not None]
        return max(values, default=0.0)

    def failed(self, max_downtime: float) -> list[str]:
        """Why this drill fails (for the exit status); empty when it passes."""
        why = []
        lost = self.consistency.lost + sum(r.lost for r in self.rounds)
        if lost:
            why.append(f"{lost} acknowledged writes lost")
        if self.consistency.split_brain:
            why.append(f"{self.consistency.split_brain} split-brain writes")
        if self.worst_downtime() > max_downtime:
            why.append(f"a downtime of {self.worst_downtime():.2f} s exceeds --max-downtime {max_downtime:g} s")
        return why

    def as_json(self) -> dict:
        return {
            "rounds": [asdict(r) for r in self.rounds],
            "summary": self.summary(),
            "consistency": {**asdict(self.consistency), "lost": self.consistency.lost},
            "wall_seconds": round(self.wall_seconds, 1),
        }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def round_table(rounds: list[RoundResult]) -> Table:
    table = Table(title="rounds: seconds after the fault", title_justify="left")
    columns = ("fault", "#", "write down", "read down", "promoted", "writes back", "healed", "lost", "dropped",
               "errors", "longest ok wait")  # fmt: skip
    for column in columns:
        table.add_column(column, no_wrap=True)
    for r in rounds:
        table.add_row(
            r.fault,
            str(r.round),
            _s(r.write_downtime),
            _s(r.read_downtime),
            _s(r.promoted),
            _s(r.writer_available),
            _s(r.redundant_again),
            str(r.lost),
            str(r.dropped),
            ", ".join(f"{code} x{n}" for code, n in sorted(r.errors.items())) or "0",
            _s(r.longest_wait),
        )
    return table


def summary_table(report: Report) -> Table:
    table = Table(title="summary per fault: seconds after the fault", title_justify="left")
    for column in ("fault", "measure", "min", "median", "max"):
        table.add_column(column, no_wrap=True)
    for fault, s in report.summary().items():
        first = True
        for phase, p in s["phases"].items():
            table.add_row(
                fault if first else "",
                phase.replace("_", " "),
                f"{p['min']:.2f}",
                f"{p['median']:.2f}",
                f"{p['max']:.2f}",
            )
            first = False
        table.add_row(fault if first else "", "lost writes", "", str(s["lost"]), "", end_section=True)
    return table


def error_lines(report: Report) -> list[str]:
    """Client errors per fault, by SQLSTATE as the client library reports them."""
    return [
        f"{fault}: " + (", ".join(f"{c} x{n}" for c, n in sorted(s["errors"].items())) or "none")
        for fault, s in report.summary().items()
    ]
