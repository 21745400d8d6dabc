"""`regnas build`, `regnas export` and `regnas check`: a family built, exported again, its artifacts checked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from regnas.cli import Command, add_rpc_options, register_command, remote_from

if TYPE_CHECKING:
    from regnas.builddir import BuildReport


@register_command
class Build(Command):
    name = "build"
    help = "build a nested model family for the given targets, and the independent baseline"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from regnas.config import add_options
        from regnas.workflow.build import NO_FINETUNE, BuildOptions

        p.add_argument(
            "--config",
            type=Path,
            default=None,
            metavar="TOML",
            help="the build's settings from a file (every build writes its own as DIR/build.toml); flags override it",
        )
        add_options(p, BuildOptions)
        p.add_argument(
            "--no-finetune",
            dest="finetune_mode",
            action="store_const",
            const=NO_FINETUNE,
            default=argparse.SUPPRESS,
            help="ship the members as searched, without the fine-tune (--finetune none)",
        )

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.builddir import BuildReport
        from regnas.config import apply_args, load_toml
        from regnas.report import markdown_summary
        from regnas.workflow.build import BuildOptions, build

        opts = apply_args(load_toml(BuildOptions, args.config) if args.config else BuildOptions(), args)
        report = BuildReport.from_json(opts.out, build(opts))
        print(markdown_summary(report), end="")
        print(f"wrote {opts.out / 'report.json'}")
        return _check_exit(report, opts.strict)


def _check_exit(report: BuildReport, strict: bool) -> int:
    """Exit 1 naming each artifact whose flips are a real regression (and, with --strict, each undecided one)."""
    for f in report.failures:
        print(f"check FAILED: {f}")
    undecided = report.inconclusive
    if strict:
        for f in undecided:
            print(f"check FAILED (--strict): {f}")
    elif undecided:
        print(
            f"check inconclusive for {len(undecided)} artifact(s): too few test images to tell their flips from the limit ({undecided[0]})"
        )
    return report.exit_code(strict)


def _add_check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", type=Path, help="a directory written by regnas build")
    p.add_argument("--strict", action="store_true", help="exit 1 also when an artifact's flip check is inconclusive")
    add_rpc_options(p)


def _export_then_check(args: argparse.Namespace, export: bool) -> int:
    from regnas.report import agreement, on_device
    from regnas.workflow.check import check_build

    report = check_build(args.build_dir, remote_from(args), export)
    for a in report.artifacts:
        for runtime, where, r in [(a.runtime, "", a), *((r.runtime, r.device or "this host", r) for r in a.runs)]:
            got = f"top-1 {r.top1:.2%}  {r.flips} flips vs fp32 ({r.verdict})" if r.status == "ok" else r.status
            print(f"{a.label:40} {runtime:12} " + (f"on {where}: " if where else "") + got)
            if where and r.vs:
                print(f"{'':40} {'':12} vs {a.runtime} on this host: {agreement(r.vs)}")
    for a in report.artifacts:
        if a.device:
            print(on_device(a))
    print(f"updated {args.build_dir / 'report.json'}")
    return _check_exit(report, args.strict)


@register_command
class Export(Command):
    name = "export"
    help = "export a built family to its targets' formats (flip-aware quantization), then check the artifacts"
    add_arguments = staticmethod(_add_check_options)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return _export_then_check(args, export=True)


@register_command
class Check(Command):
    name = "check"
    help = "run every artifact of a build on the test split: flips vs fp32 with their interval, and vs the previous member"
    add_arguments = staticmethod(_add_check_options)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        return _export_then_check(args, export=False)
