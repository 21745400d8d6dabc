"""The `regnas` command line: one small class per subcommand, registered in one launcher.

Exit codes: 0 success, 1 a gate or check failed, 2 bad input or environment (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regnas.config import count, minutes, positive
from regnas.errors import RegnasError

if TYPE_CHECKING:
    from regnas.builddir import BuildReport

logger = logging.getLogger(__name__)

DEFAULT_TRAIN_MINUTES = 30.0

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


def _port(value: str) -> int:
    v = int(value)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port, 1 to 65535, got {v}")
    return v


def _add_rpc_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", default=None, metavar="HOST:PORT", help="a TVM RPC server (or, with --rpc-key, a tracker) on the device")
    p.add_argument("--rpc-key", default=None, help="device key to request from the TVM RPC tracker at --rpc")


def _remote(args: argparse.Namespace):
    from regnas.runtimes import Remote

    if args.rpc_key and not args.rpc:
        raise RegnasError("--rpc-key needs --rpc HOST:PORT of the tracker")
    return Remote.parse(args.rpc, args.rpc_key) if args.rpc else None


def _data_option(p: argparse.ArgumentParser, help: str, required: bool = False) -> None:
    p.add_argument("--data", required=required, default=None if required else "digits", help=help)
    p.add_argument(
        "--image-size",
        type=positive,
        default=None,
        metavar="N",
        help="an image folder's images: shorter side resized to N px, then centre-cropped to NxN (default: as they are; they "
        "must then share one size)",
    )


def _seed_option(p: argparse.ArgumentParser, seeds: str) -> None:
    p.add_argument("--seed", type=count, default=0, help=f"seed of {seeds} (default: 0)")


def _threads_option(p: argparse.ArgumentParser, default: int | None, help: str) -> None:
    p.add_argument("--threads", type=positive, default=default, help=help)


def _json_option(p: argparse.ArgumentParser, help: str = "also write the result as JSON") -> None:
    p.add_argument("--json", type=Path, default=None, help=help)


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
        report = build(opts)
        print(markdown_summary(report), end="")
        print(f"wrote {opts.out / 'report.json'}")
        return _check_exit(BuildReport.from_json(opts.out, report), opts.strict)


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
    _add_rpc_options(p)


def _export_then_check(args: argparse.Namespace, export: bool) -> int:
    from regnas.builddir import BuildReport
    from regnas.report import on_device
    from regnas.workflow.check import check_build

    result = check_build(args.build_dir, _remote(args), export)
    for a in result.artifacts:
        got = f"top-1 {a.top1:.2%}  {a.flips} flips vs fp32 ({a.verdict})" if a.status == "ok" else a.status
        print(f"{a.label:40} {a.runtime:12} {got}")
    for a in result.artifacts:
        if a.device:
            print(on_device(a.to_json()))
    print(f"updated {args.build_dir / 'report.json'}")
    return _check_exit(BuildReport.read(args.build_dir), args.strict)


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


@register_command
class Train(Command):
    name = "train"
    help = "train a weight-sharing supernet (sandwich rule, in-place distillation); runs under torchrun unchanged"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, required=True, help="output directory for the checkpoint")
        p.add_argument("--batch-size", type=positive, default=None, help="default: 32 below 4096 training images, else 128")
        p.add_argument(
            "--lr",
            type=_positive_float,
            default=None,
            help="peak learning rate of the one-cycle schedule for a net trained alone; a space's recipe may train its supernet "
            "at a multiple of it (default: the recipe's, 0.003 for AdamW)",
        )
        p.add_argument(
            "--time-budget",
            type=minutes,
            default=None,
            metavar="MIN",
            help=f"minutes of training; epochs are planned from timed steps here (default: {DEFAULT_TRAIN_MINUTES:g} unless --epochs)",
        )
        p.add_argument(
            "--sort-channels", action="store_true", help="after the warm start (the largest subnet alone), order channels by importance"
        )
        from regnas.config import add_options
        from regnas.workflow.build import BuildOptions

        add_options(p, BuildOptions, {"data", "image_size", "val_size", "seed", "space", "epochs", "precision", "augment"}, defaults=True)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace

        from regnas.augment import create_augment
        from regnas.builddir import DATA_CACHE, locked
        from regnas.data import load_dataset
        from regnas.distributed import init_world
        from regnas.io import ensure_writable_dir
        from regnas.spaces import space_class, space_for
        from regnas.train import CHECKPOINT, check_precision, default_batch_size, planned, recipe, settle_precision, train_supernet

        if args.space:
            space_class(args.space)
        check_precision(args.precision)
        if args.augment:
            create_augment(args.augment)
        ensure_writable_dir(args.out, "--out")
        data = load_dataset(args.data, args.seed, val_size=args.val_size, image_size=args.image_size, cache=args.out / DATA_CACHE)
        space = space_for(data.input_shape, data.num_classes, args.space)
        n = len(data["train"])
        world = init_world()
        cfg = recipe(
            space,
            epochs=args.epochs or 1,
            batch_size=args.batch_size or default_batch_size(n),
            lr=args.lr,
            sort_channels=args.sort_channels,
            seed=args.seed,
            augment=args.augment,
            precision=args.precision,
        )
        try:
            cfg = settle_precision(args.out, data, space, cfg, world)
            if not args.epochs:
                budget = args.time_budget or DEFAULT_TRAIN_MINUTES
                cfg = planned(args.out, data, space, replace(cfg, time_budget_min=budget), budget * 60, world)
            with locked(args.out, "train") if world.main else contextlib.nullcontext():
                train_supernet(data, args.out, cfg, space.name, world=world)
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
        from regnas.builddir import locked, read_report
        from regnas.report import write_reports

        report = read_report(args.build_dir)
        with locked(args.build_dir, "report"):
            paths = write_reports(args.build_dir, report)
        for path in paths:
            print(f"wrote {path}")
        return 0


def _space_for(args: argparse.Namespace):
    """The search space (default config) for the input shape and classes of the dataset `args` name."""
    from regnas.data import load_dataset
    from regnas.spaces import space_for

    data = load_dataset(args.data, 0, image_size=args.image_size)
    return space_for(data.input_shape, data.num_classes, args.space)


def _add_space_options(p: argparse.ArgumentParser) -> None:
    _data_option(p, "the dataset the LUT is for (fixes the input size; default: digits)")
    p.add_argument("--space", default=None, help="search space (default: mbv3 for inputs under 16 px, resnet from 16 px)")
    p.add_argument("--targets-dir", type=Path, default=None, help="a directory of target .toml files, added to the built-ins")


@register_command
class Targets(Command):
    name = "targets"
    help = "list the targets, show one, or validate a target's LUT against end-to-end measurements"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("action", choices=["list", "show", "validate"])
        p.add_argument("target", nargs="?", help="with show/validate: a target name or a .toml path")
        p.add_argument("--n", type=positive, default=50, help="validate: subnets measured to score the predictor (default: 50)")
        p.add_argument("--n-fit", type=positive, default=30, help="validate: other subnets measured to fit the calibration (default: 30)")
        p.add_argument("--lut", type=Path, default=None, help="validate: the LUT file (default: the target's, --lut-dir's or the built-in)")
        p.add_argument("--lut-dir", type=Path, default=None, help="validate: a directory of LUTs written by regnas profile")
        _json_option(p, "validate: also write the numbers as JSON")
        _seed_option(p, "validate's random subnets")
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

    from regnas.io import ensure_writable_file, write_json
    from regnas.targets.profile import validate_lut

    ensure_writable_file(args.json, "--json")
    space = _space_for(args)
    path, result = validate_lut(target, space, args.lut, args.lut_dir, args.n, args.n_fit, args.seed, _remote(args), sys.stderr.isatty())
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
        p.add_argument("--warmup", type=positive, default=10, help="untimed runs per unit (default: 10)")
        p.add_argument("--repeats", type=positive, default=50, help="timed runs per unit (default: 50)")
        _threads_option(p, None, "runtime threads (default: the target's; recorded in the LUT)")
        _add_space_options(p)
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace

        from regnas.targets import resolve_targets
        from regnas.targets.lut import lut_filename
        from regnas.targets.profile import profile

        (target,) = resolve_targets(args.target, args.targets_dir)
        if args.threads:
            target = replace(target, threads=args.threads)
        space = _space_for(args)
        out = args.out or Path("luts") / lut_filename(target.name, space.name, space.input_shape)
        cores = os.cpu_count() or 1
        if args.rpc is None and target.threads >= cores:
            logger.warning(
                f"timing with {target.threads} threads on {cores} cores leaves none for the rest of the system; "
                f"timings may not repeat (consider --threads {max(1, cores - 1)})"
            )
        profile(target, space, out, _remote(args), args.warmup, args.repeats, progress=sys.stderr.isatty())
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
        _threads_option(p, 1, "runtime threads (default: 1)")
        p.add_argument("--batch", type=positive, default=1, help="batch size (default: 1)")
        p.add_argument("--input-shape", default=None, help="C,H,W for models whose input shape is dynamic")
        p.add_argument("--warmup", type=positive, default=20, help="untimed runs (default: 20)")
        p.add_argument("--repeats", type=positive, default=200, help="timed runs (default: 200)")
        _json_option(p)
        _add_rpc_options(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import json

        from regnas.bench import bench
        from regnas.io import ensure_writable_file, write_json

        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(v) for v in args.input_shape.split(","))
            except ValueError:
                raise RegnasError(f"--input-shape {args.input_shape!r} is not C,H,W integers; pass e.g. 1,28,28") from None
            if len(shape) != 3 or min(shape) < 1:
                raise RegnasError(f"--input-shape {args.input_shape!r} needs three positive integers C,H,W")
        ensure_writable_file(args.json, "--json")
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


def _confidence(value: str) -> float:
    v = float(value)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1 (such as 0.95), got {v}")
    return v


def _finite(value: str) -> float:
    v = float(value)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return v


def _positive_float(value: str) -> float:
    v = _finite(value)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
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
        _data_option(p, "dataset name or path, as for regnas build", required=True)
        p.add_argument("--split", default=None, help="train, calib, val or test (default: the whole set, in source order)")
        _seed_option(p, "the dataset's split, as given to regnas build")
        p.add_argument("--max-nfr", type=_fraction, default=0.01, help="largest acceptable NFR upper bound (default: 0.01)")
        p.add_argument("--max-top1-drop", type=_fraction, default=0.01, help="largest acceptable top-1 drop (default: 0.01)")
        p.add_argument("--confidence", type=_confidence, default=0.95, help="confidence of the NFR upper bound (default: 0.95)")
        p.add_argument("--list", type=count, default=20, help="how many flipped samples to list (default: 20)")
        p.add_argument("--mean", type=_finite, nargs="+", default=[0.0], help="ONNX inputs: per-channel mean subtracted from [0, 1] images")
        p.add_argument("--std", type=_positive_float, nargs="+", default=[1.0], help="ONNX inputs: per-channel std to divide by")
        _threads_option(p, 1, "ONNX Runtime threads (default: 1)")
        _json_option(p, "write the result as JSON")
        p.add_argument("--junit", type=Path, default=None, help="write JUnit XML")
        p.add_argument("--markdown", type=Path, default=None, help="write a markdown summary (pull-request comment)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.io import ensure_writable_file
        from regnas.workflow.gate import Preprocess, gate, write_outputs

        for option in ("json", "junit", "markdown"):
            ensure_writable_file(getattr(args, option), f"--{option}")
        result = gate(
            args.reference,
            args.candidate,
            args.data,
            args.split,
            args.seed,
            args.image_size,
            args.max_nfr,
            args.max_top1_drop,
            args.confidence,
            args.list,
            Preprocess(tuple(args.mean), tuple(args.std)),
            args.threads,
        )
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


@register_command
class Device(Command):
    name = "device"
    help = "an emulated aarch64 edge device (qemu-user + TVM RPC) for checking aarch64 artifacts without a board"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("action", choices=["setup", "emulate"], help="setup: build the cached sysroot once; emulate: serve TVM RPC")
        p.add_argument("--host", default="127.0.0.1", help="emulate: address to listen on (default: 127.0.0.1)")
        p.add_argument("--port", type=_port, default=9090, help="emulate: TVM RPC port (default: 9090)")
        p.add_argument("--sysroot", type=Path, default=None, help="the sysroot folder (default: in the user cache, ~/.cache/regnas)")
        p.add_argument("--force", action="store_true", help="setup: rebuild the sysroot even when one is there")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas import emulator

        if args.action == "setup":
            print(f"sysroot ready: {emulator.setup(args.sysroot, args.force)}")
            return 0
        device = emulator.start(args.host, args.port, args.sysroot)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the server too, not only this process
        print(f"emulated aarch64 device: TVM RPC on {device.address} (correctness, not speed); use --rpc {device.address}; Ctrl-C stops it")
        sys.stdout.flush()
        try:
            return device.process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            device.stop()


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error contract: one line naming the option, exit 2 (no usage block).

    A subcommand's options are declared when it is used (parsed or asked for help): some declarations import
    the modules that own them (torch among them), which the other subcommands need not pay for."""

    def __init__(self, *args: Any, declare: Callable[[argparse.ArgumentParser], None] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self._declare = declare

    def declared(self) -> _Parser:
        """This parser with its options declared."""
        if self._declare is not None:
            declare, self._declare = self._declare, None
            declare(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        return super(_Parser, self.declared()).parse_known_args(args, namespace)

    def format_help(self) -> str:
        return super(_Parser, self.declared()).format_help()

    def format_usage(self) -> str:
        return super(_Parser, self.declared()).format_usage()

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def make_parser(eager: bool = False) -> argparse.ArgumentParser:
    """The `regnas` parser; `eager` declares every subcommand's options now (to list them), else on first use."""
    from regnas import __version__

    parser = _Parser(prog="regnas", description="Hardware-aware model families that agree with each other.")
    parser.add_argument("--version", action="version", version=f"regnas {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-q", "--quiet", action="store_const", dest="verbosity", const=-1, default=0, help="only warnings and errors on stderr"
    )
    talk.add_argument("-v", "--verbose", action="store_const", dest="verbosity", const=1, help="debug messages on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name, cls in _COMMANDS.items():
        p = sub.add_parser(name, help=cls.help, description=cls.help, declare=cls.add_arguments)
        p.set_defaults(_command=cls)
        if eager:
            p.declared()
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `regnas` console script."""
    from regnas.io import FULL_DISK, full_disk
    from regnas.logs import configure

    args = make_parser().parse_args(argv)
    configure(args.verbosity)
    try:
        return args._command.run(args)
    except RegnasError as exc:
        print(f"regnas: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk anywhere (a library's own write included) is the environment, not a bug
        if exc.errno not in FULL_DISK:
            raise
        print(f"regnas: error: {full_disk(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("regnas: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
