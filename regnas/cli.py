"""The `regnas` command line: one small class per subcommand, registered in one launcher.

Exit codes: 0 success, 1 a gate or check failed, 2 bad input or environment (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regnas.errors import RegnasError

_COMMANDS: dict[str, type[Command]] = {}


def register_command(cls: type[Command]) -> type[Command]:
    """Class decorator: make `cls` a subcommand named `cls.name`."""
    _COMMANDS[cls.name] = cls
    return cls


class Command:
    """A subcommand: declares its options in `add_arguments`, does its work in `run`."""

    name: str
    help: str

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's options."""

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Do the work; return the exit code."""
        raise NotImplementedError


def _positive(value: str) -> int:
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="dataset name (digits, fashion-mnist), .npz file or image folder (default: digits)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, training and search (default: 0)")
    p.add_argument("--space", default=None, help="search space (default: mbv3, or the checkpoint's)")
    p.add_argument("--epochs", type=_positive, default=None, help="supernet training epochs (default: scaled to the dataset size)")


@register_command
class Build(Command):
    name = "build"
    help = "build a nested model family for the given targets, and the independent baseline"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--targets", default="phone,edge,server", help="comma-separated built-in targets or target .toml paths")
        p.add_argument("--out", type=Path, default=Path("build"), help="build directory (a cache: re-runs resume)")
        p.add_argument("--supernet", type=Path, default=None, help="trained supernet checkpoint (.safetensors); trained when absent")
        p.add_argument("--reward", default="R2", help="R0 (accuracy), R1 (flips), R2 (both) or 'λ1,λ2' (default: R2)")
        p.add_argument("--population", type=_positive, default=None, help="evolution population size")
        p.add_argument("--generations", type=_positive, default=None, help="evolution generations")
        _add_data_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace

        from regnas.build import BuildOptions, build
        from regnas.report import markdown_summary
        from regnas.search import SearchConfig

        search = SearchConfig()
        if args.population:
            search = replace(search, population=args.population)
        if args.generations:
            search = replace(search, generations=args.generations)
        opts = BuildOptions(args.targets, args.data, args.out, args.supernet, args.seed, args.space, args.epochs, args.reward, search)
        report = build(opts)
        print(markdown_summary(report), end="")
        print(f"wrote {args.out / 'report.json'}")
        return 0


@register_command
class Train(Command):
    name = "train"
    help = "train a weight-sharing supernet (sandwich rule, in-place distillation)"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True, help="output directory for the checkpoint")
        p.add_argument("--batch-size", type=_positive, default=None, help="default: 32 below 4096 training images, else 128")
        p.add_argument("--lr", type=float, default=3e-3)
        p.add_argument(
            "--sort-channels", action="store_true", help="train the largest subnet for one epoch, then order channels by importance"
        )
        _add_data_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.build import log
        from regnas.data import load_dataset
        from regnas.spaces import space_class
        from regnas.train import CHECKPOINT, TrainConfig, default_batch_size, default_epochs, train_supernet

        space = args.space or "mbv3"
        space_class(space)
        data = load_dataset(args.data, args.seed)
        n = len(data["train"])
        cfg = TrainConfig(
            epochs=args.epochs or default_epochs(n),
            batch_size=args.batch_size or default_batch_size(n),
            lr=args.lr,
            sort_channels=args.sort_channels,
            seed=args.seed,
        )
        train_supernet(data, args.out, cfg, space, log=log)
        print(f"wrote {args.out / CHECKPOINT}")
        return 0


@register_command
class Report(Command):
    name = "report"
    help = "write report.html and summary.md for a build directory from its report.json"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("build_dir", type=Path, help="a directory written by regnas build")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.report import load_report, write_reports

        for path in write_reports(args.build_dir, load_report(args.build_dir)):
            print(f"wrote {path}")
        return 0


@register_command
class Targets(Command):
    name = "targets"
    help = "list the built-in targets, or show one (a name or a target .toml path)"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("action", choices=["list", "show"])
        p.add_argument("target", nargs="?", help="with show: a built-in name or a .toml path")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import json

        from regnas.targets import builtin_targets, resolve_targets

        if args.action == "list":
            for t in sorted(builtin_targets().values(), key=lambda t: t.budget_flops(10**9)):
                print(f"{t.name:10} {t.runtime:12} {t.precision:5} budget {t.describe_budget():40} {t.description}")
            return 0
        if not args.target:
            raise RegnasError("targets show needs a target: regnas targets show phone")
        (target,) = resolve_targets(args.target)
        print(json.dumps(target.to_json(), indent=2))
        return 0


def _fraction(value: str) -> float:
    v = float(value)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {v}")
    return v


@register_command
class Gate(Command):
    name = "gate"
    help = "fail (exit 1) when a candidate model flips samples its reference gets right"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        what = "an .onnx model, a build member directory (BUILD_DIR/<target>) or .npy/.json predictions"
        p.add_argument("--reference", required=True, help=f"the model to stay compatible with: {what}")
        p.add_argument("--candidate", required=True, help=f"the new model: {what}")
        p.add_argument("--data", required=True, help="dataset name or path, as for regnas build")
        p.add_argument("--split", default=None, help="train, calib, val or test (default: the whole set, in source order)")
        p.add_argument("--seed", type=int, default=0, help="seed of the dataset's splits (default: 0, as regnas build)")
        p.add_argument("--max-nfr", type=_fraction, default=0.01, help="largest acceptable NFR upper bound (default: 0.01)")
        p.add_argument("--max-top1-drop", type=_fraction, default=0.01, help="largest acceptable top-1 drop (default: 0.01)")
        p.add_argument("--confidence", type=_fraction, default=0.95, help="confidence of the NFR upper bound (default: 0.95)")
        p.add_argument("--list", type=int, default=20, help="how many flipped samples to list (default: 20)")
        p.add_argument("--mean", type=float, nargs="+", default=[0.0], help="ONNX inputs: per-channel mean subtracted from [0, 1] images")
        p.add_argument("--std", type=float, nargs="+", default=[1.0], help="ONNX inputs: per-channel std to divide by")
        p.add_argument("--threads", type=_positive, default=1, help="ONNX Runtime threads")
        p.add_argument("--json", type=Path, default=None, help="write the result as JSON")
        p.add_argument("--junit", type=Path, default=None, help="write JUnit XML")
        p.add_argument("--markdown", type=Path, default=None, help="write a markdown summary (pull-request comment)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.data import load_dataset
        from regnas.gate import Preprocess, decide, predictions, write_outputs

        if any(s <= 0 for s in args.std):
            raise RegnasError("--std values must be positive")
        data = load_dataset(args.data, args.seed)
        split = data.split(args.split)
        prep = Preprocess(tuple(args.mean), tuple(args.std))
        ref = predictions(args.reference, split, data.num_classes, prep, args.threads)
        cand = predictions(args.candidate, split, data.num_classes, prep, args.threads)
        result = decide(ref, cand, split.y.numpy(), args.max_nfr, args.max_top1_drop, args.confidence, args.list)
        write_outputs(result, args.reference, args.candidate, args.json, args.junit, args.markdown)
        verdict = "passed" if result.passed else "REGRESSION"
        print(
            f"gate {verdict}: {result.flips} negative flips in {result.n} samples, NFR {100 * result.nfr:.2f}% "
            f"(upper {100 * result.nfr_upper:.2f}% at {result.confidence:.0%}; limit {100 * result.max_nfr:.2f}%), "
            f"top-1 {100 * result.top1_reference:.2f}% -> {100 * result.top1_candidate:.2f}%"
        )
        for reason in result.reasons:
            print(f"  {reason}")
        return 0 if result.passed else 1


def make_parser() -> argparse.ArgumentParser:
    from regnas import __version__

    parser = argparse.ArgumentParser(prog="regnas", description="Hardware-aware model families that agree with each other.")
    parser.add_argument("--version", action="version", version=f"regnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cls in _COMMANDS.items():
        p = sub.add_parser(name, help=cls.help, description=cls.help)
        cls.add_arguments(p)
        p.set_defaults(_command=cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `regnas` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args._command.run(args)
    except RegnasError as exc:
        print(f"regnas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regnas: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
