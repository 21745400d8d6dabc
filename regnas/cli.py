"""The `regnas` command line: one small class per subcommand, registered in one launcher.

Exit codes: 0 success, 1 a gate or check failed, 2 bad input or environment (one line on stderr).
"""

from __future__ import annotations

import argparse
import os
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


def _add_rpc_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", default=None, metavar="HOST:PORT", help="a TVM RPC server (or, with --rpc-key, a tracker) on the device")
    p.add_argument("--rpc-key", default=None, help="device key to request from the TVM RPC tracker at --rpc")


def _remote(args: argparse.Namespace):
    from regnas.runtimes import Remote

    if args.rpc_key and not args.rpc:
        raise RegnasError("--rpc-key needs --rpc HOST:PORT of the tracker")
    return Remote.parse(args.rpc, args.rpc_key) if args.rpc else None


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
        p.add_argument("--targets-dir", type=Path, default=None, help="a directory of target .toml files, added to the built-ins")
        p.add_argument("--no-export", dest="export", action="store_false", help="stop after the family: no artifacts, no check")
        p.add_argument(
            "--workers", type=_positive, default=1, help="evaluate search candidates on N local Ray workers (default: 1, in process)"
        )
        p.add_argument(
            "--ray-address", default=None, help="evaluate on an existing Ray cluster (host:port of its head, or auto); needs regnas[ray]"
        )
        _add_rpc_options(p)
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
        opts = BuildOptions(
            args.targets,
            args.data,
            args.out,
            args.supernet,
            args.seed,
            args.space,
            args.epochs,
            args.reward,
            search,
            export=args.export,
            targets_dir=args.targets_dir,
            remote=_remote(args),
            workers=args.workers,
            ray_address=args.ray_address,
        )
        report = build(opts)
        print(markdown_summary(report), end="")
        print(f"wrote {args.out / 'report.json'}")
        return _check_exit(report)


def _check_exit(report: dict) -> int:
    """Exit 1 naming each artifact over its flip threshold."""
    failures = report.get("check", {}).get("failures", [])
    for f in failures:
        print(f"check FAILED: {f}")
    return 1 if failures else 0


@register_command
class Export(Command):
    name = "export"
    help = "export a built family to its targets' formats (flip-aware quantization), then check the artifacts"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("build_dir", type=Path, help="a directory written by regnas build")
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.artifacts import export_family
        from regnas.build import log
        from regnas.check import check, load_build, save_check

        report, targets, data = load_build(args.build_dir)
        remote = _remote(args)
        artifacts = export_family(args.build_dir, targets, data, log=log)
        report = save_check(args.build_dir, report, check(args.build_dir, artifacts, targets, data, remote, log=log))
        print(f"wrote {len(artifacts)} artifacts; updated {args.build_dir / 'report.json'}")
        return _check_exit(report)


@register_command
class Check(Command):
    name = "check"
    help = "run every artifact of a build on the test split: top-1, flips vs fp32 and vs the previous member (exit 1 over threshold)"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("build_dir", type=Path, help="a directory written by regnas build")
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.artifacts import Artifact
        from regnas.build import log
        from regnas.check import check, load_build, save_check

        report, targets, data = load_build(args.build_dir)
        if not report.get("artifacts"):
            raise RegnasError(f"{args.build_dir} has no artifacts; run regnas export {args.build_dir} first")
        artifacts = [Artifact.from_json(a) for a in report["artifacts"]]
        result = check(args.build_dir, artifacts, targets, data, _remote(args), log=log)
        report = save_check(args.build_dir, report, result)
        for a in result.artifacts:
            got = f"top-1 {a.top1:.2%}  NFR vs fp32 {a.nfr_vs_fp32:.2%}" if a.status == "ok" else a.status
            print(f"{a.label:40} {a.runtime:12} {got}")
        return _check_exit(report)


@register_command
class Train(Command):
    name = "train"
    help = "train a weight-sharing supernet (sandwich rule, in-place distillation); runs under torchrun unchanged"

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
        from regnas.distributed import init_world
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
        world = init_world()
        try:
            train_supernet(data, args.out, cfg, space, log=log, world=world)
        finally:
            world.close()
        if world.main:
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


def _space_for(data_spec: str, seed: int, space_name: str | None):
    """The search space (default config) for a dataset's input shape and classes."""
    from regnas.data import load_dataset
    from regnas.spaces import create_space, space_class

    data = load_dataset(data_spec, seed)
    name = space_name or "mbv3"
    return create_space(name, space_class(name).default_config(data.input_shape, data.num_classes))


def _add_space_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="the dataset the LUT is for (fixes the input size; default: digits)")
    p.add_argument("--space", default=None, help="search space (default: mbv3)")
    p.add_argument("--targets-dir", type=Path, default=None, help="a directory of target .toml files, added to the built-ins")


@register_command
class Targets(Command):
    name = "targets"
    help = "list the targets, show one, or validate a target's LUT against end-to-end measurements"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("action", choices=["list", "show", "validate"])
        p.add_argument("target", nargs="?", help="with show/validate: a target name or a .toml path")
        p.add_argument("--n", type=_positive, default=50, help="validate: subnets measured to score the predictor (default: 50)")
        p.add_argument("--n-fit", type=_positive, default=30, help="validate: other subnets measured to fit the calibration (default: 30)")
        p.add_argument("--lut", type=Path, default=None, help="validate: the LUT file (default: the target's, --lut-dir's or the built-in)")
        p.add_argument("--lut-dir", type=Path, default=None, help="validate: a directory of LUTs written by regnas profile")
        p.add_argument("--json", type=Path, default=None, help="validate: also write the numbers as JSON")
        p.add_argument("--seed", type=int, default=0, help="validate: seed of the random subnets (default: 0)")
        _add_space_options(p)
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import json

        from regnas.targets import available_targets, resolve_targets

        if args.action == "list":

            def order(t):
                flops = t.budget_flops(10**9)
                return (flops is None, flops or t.latency_ms)

            for t in sorted(available_targets(args.targets_dir).values(), key=order):
                exporters = ", ".join(f"{k} {'/'.join(v)}" for k, v in t.exporters.items())
                print(f"{t.name:10} {t.runtime:12} {t.precision:5} budget {t.describe_budget():40} exports {exporters or 'nothing'}")
            return 0
        if not args.target:
            raise RegnasError(f"targets {args.action} needs a target: regnas targets {args.action} phone")
        (target,) = resolve_targets(args.target, args.targets_dir)
        if args.action == "show":
            print(json.dumps(target.to_json(), indent=2))
            return 0
        return _validate(target, args)


def _validate(target, args: argparse.Namespace) -> int:
    import json

    from regnas.build import log
    from regnas.io import write_json
    from regnas.targets.lut import find_lut, load_lut, save_lut
    from regnas.targets.profile import validate

    space = _space_for(args.data, 0, args.space)
    if args.lut:
        path, lut = args.lut, load_lut(args.lut)
        if not lut.matches(target, space):
            raise RegnasError(f"{path} was measured for {lut.space} {lut.runtime}/{lut.precision}, not this target and space; pick its LUT")
    else:
        found = find_lut(target, space, args.lut_dir)
        if found is None:
            shape = space.input_shape
            raise RegnasError(f"no LUT for {target.name} and {space.name} at {shape}; run regnas profile --target {target.name} first")
        path, lut = found
    from dataclasses import replace

    target = replace(target, threads=lut.threads)  # measure subnets as the units were measured
    result = validate(target, space, lut, args.n, args.n_fit, args.seed, _remote(args), log=log, progress=sys.stderr.isatty())
    save_lut(path, lut)
    if args.json:
        write_json(args.json, {"target": target.name, "lut": str(path), **result})
    keys = ("n", "within_5pct", "within_10pct", "rmspe", "spearman")
    print(json.dumps({k: result[k] for k in keys} | {"before_calibration": {k: result["before_calibration"][k] for k in keys}}, indent=2))
    return 0


@register_command
class Profile(Command):
    name = "profile"
    help = "measure every unit of the search space on a target's runtime and write its latency LUT"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", required=True, help="a target name or .toml path")
        default = "luts/<target>-<space>-<C>x<H>x<W>.json"
        p.add_argument("--out", type=Path, default=None, help=f"LUT file (default: {default}); an unfinished one is resumed")
        p.add_argument("--warmup", type=_positive, default=10, help="untimed runs per unit (default: 10)")
        p.add_argument("--repeats", type=_positive, default=50, help="timed runs per unit (default: 50)")
        p.add_argument("--threads", type=_positive, default=None, help="runtime threads (default: the target's; recorded in the LUT)")
        _add_space_options(p)
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace

        from regnas.build import log
        from regnas.targets import resolve_targets
        from regnas.targets.lut import lut_filename
        from regnas.targets.profile import profile

        (target,) = resolve_targets(args.target, args.targets_dir)
        if args.threads:
            target = replace(target, threads=args.threads)
        space = _space_for(args.data, 0, args.space)
        out = args.out or Path("luts") / lut_filename(target.name, space.name, space.input_shape)
        cores = os.cpu_count() or 1
        if args.rpc is None and target.threads >= cores:
            log(
                f"warning: timing with {target.threads} threads on {cores} cores leaves none for the rest of the system; "
                f"timings may not repeat (consider --threads {max(1, cores - 1)})"
            )
        profile(target, space, out, _remote(args), args.warmup, args.repeats, log=log, progress=sys.stderr.isatty())
        print(f"wrote {out}")
        return 0


@register_command
class Bench(Command):
    name = "bench"
    help = "measure an artifact's latency (p50/p90/p99/mean) in its runtime, here or on a device over TVM RPC"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", type=Path, help="an artifact: .onnx, .pte, .so (TVM), .mlpackage or .engine")
        p.add_argument("--runtime", default=None, help="runtime name (default: chosen by the file suffix)")
        p.add_argument("--threads", type=_positive, default=1, help="runtime threads (default: 1)")
        p.add_argument("--batch", type=_positive, default=1, help="batch size (default: 1)")
        p.add_argument("--input-shape", default=None, help="C,H,W for models whose input shape is dynamic")
        p.add_argument("--warmup", type=_positive, default=20, help="untimed runs (default: 20)")
        p.add_argument("--repeats", type=_positive, default=200, help="timed runs (default: 200)")
        p.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import json

        from regnas.bench import bench
        from regnas.io import write_json

        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(v) for v in args.input_shape.split(","))
            except ValueError:
                raise RegnasError(f"--input-shape {args.input_shape!r} is not C,H,W integers; pass e.g. 1,28,28") from None
            if len(shape) != 3 or min(shape) < 1:
                raise RegnasError(f"--input-shape {args.input_shape!r} needs three positive integers C,H,W")
        result = bench(args.model, args.runtime, args.threads, _remote(args), args.batch, shape, args.warmup, args.repeats)
        if args.json:
            write_json(args.json, result.to_json())
        print(json.dumps(result.to_json(), indent=2))
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
