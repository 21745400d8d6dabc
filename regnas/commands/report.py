"""`regnas report`: report.html and summary.md written again from report.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from regnas.cli import Command, register_command


@register_command
class Report(Command):
    name = "report"
    help = "write report.html and summary.md for a build directory from its report.json"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("build_dir", type=Path, help="a directory written by regnas build")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.builddir import BuildReport, locked
        from regnas.report import write_reports

        report = BuildReport.read(args.build_dir)
        with locked(args.build_dir, "report"):
            paths = write_reports(report)
        for path in paths:
            print(f"wrote {path}")
        return 0
