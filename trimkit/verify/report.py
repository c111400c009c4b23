"""What verify reports: one record per check (value, threshold, verdict), the whole report as JSON,
and JUnit XML for CI (one <testcase> per check)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Check", "VerifyReport", "write_junit"]


@dataclass
class Check:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    comparison: str  # ">=" or "<="
    detail: str = ""
    runtime: str = ""  # the runtime whose outputs the check judged ("" for checks of no one runtime)
    display: str = ""  # the threshold as a table shows it, where `comparison threshold` says less than the check


@dataclass
class VerifyReport:
    checkpoint: str
    artifact: str
    runtime: str
    mode: str
    checks: list[Check] = field(default_factory=list)
    numerics: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    speed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # every runtime verify ran (the first is `runtime`, whose numbers also fill `numerics` and `task`):
    # runtime -> {"describe": runner.describe(), "numerics": {...}, "accuracy": float | None}
    runtimes: dict[str, dict[str, Any]] = field(default_factory=dict)
    layout: str = ""  # the artifact's token layout (`trimkit_layout`): packed or padded

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def write_junit(report: VerifyReport, path: str | os.PathLike) -> None:
    """One <testcase> per check; failures carry value and threshold."""
    from xml.sax.saxutils import quoteattr

    from ..fileio import atomic_write

    failures = sum(not c.passed for c in report.checks)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<testsuite name="trimkit.verify" tests="{len(report.checks)}" failures="{failures}" errors="0" '
             f'time="{report.seconds:.3f}">']
    for c in report.checks:
        lines.append(f'  <testcase classname="trimkit.verify.{c.runtime or report.runtime}" name={quoteattr(c.name)}>')
        if not c.passed:
            msg = f"{c.name}: {c.value} not {c.comparison} {c.threshold}"
            lines.append(f"    <failure message={quoteattr(msg)}>{quoteattr(c.detail)[1:-1]}</failure>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"), force=True)
