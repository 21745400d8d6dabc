"""`regnas gate`: the flip gate for CI."""

from __future__ import annotations

import argparse
from pathlib import Path

from regnas.cli import Command, data_option, json_option, register_command, seed_option, threads_option
from regnas.config import confidence, count, finite, fraction, positive_float


@register_command
class Gate(Command):
    name = "gate"
    help = "fail (exit 1) when a candidate model flips samples its reference gets right"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        what = "an .onnx model, a build member directory (BUILD_DIR/<target>) or .npy/.json predictions"
        p.add_argument("--reference", help=f"the model to stay compatible with: {what}")
        p.add_argument("--candidate", help=f"the new model: {what}")
        data_option(p, "dataset name or path, as for regnas build", default=None)
        p.add_argument(
            "--build",
            type=Path,
            default=None,
            help="instead of the three above: a build made with --deployed; gates its --target member against that target's "
            "deployed model (kept in the build) on the build's own test split",
        )
        p.add_argument("--target", default=None, help="with --build: the member to gate")
        p.add_argument(
            "--split", default=None, help="train, calib, val or test (default: the whole set, in source order; with --build: test)"
        )
        seed_option(p, "the dataset's split, as given to regnas build")
        p.add_argument("--max-nfr", type=fraction, default=0.01, help="largest acceptable NFR upper bound (default: 0.01)")
        p.add_argument("--max-top1-drop", type=fraction, default=0.01, help="largest acceptable top-1 drop (default: 0.01)")
        p.add_argument("--confidence", type=confidence, default=0.95, help="confidence of the NFR upper bound (default: 0.95)")
        p.add_argument("--list", type=count, default=20, help="how many flipped samples to list (default: 20)")
        p.add_argument("--mean", type=finite, nargs="+", default=[0.0], help="ONNX inputs: per-channel mean subtracted from [0, 1] images")
        p.add_argument("--std", type=positive_float, nargs="+", default=[1.0], help="ONNX inputs: per-channel std to divide by")
        threads_option(p, 1, "ONNX Runtime threads (default: 1)")
        json_option(p, "write the result as JSON")
        p.add_argument("--junit", type=Path, default=None, help="write JUnit XML")
        p.add_argument("--markdown", type=Path, default=None, help="write a markdown summary (pull-request comment)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.errors import RegnasError
        from regnas.io import ensure_writable_file
        from regnas.workflow.gate import Preprocess, gate, gate_build, write_outputs

        for option in ("json", "junit", "markdown"):
            ensure_writable_file(getattr(args, option), f"--{option}")
        reference, candidate = args.reference, args.candidate
        if args.build is not None:
            if reference or candidate or args.data or not args.target:
                raise RegnasError("--build takes --target NAME and no --reference, --candidate or --data: it gates the build's own")
            limits = (args.max_nfr, args.max_top1_drop, args.confidence, args.list, args.threads)
            result, reference, candidate = gate_build(args.build, args.target, args.split or "test", *limits)
        elif not (reference and candidate and args.data):
            raise RegnasError("regnas gate needs --reference, --candidate and --data (or --build DIR --target NAME)")
        else:
            result = gate(
                reference,
                candidate,
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
        write_outputs(result, reference, candidate, args.json, args.junit, args.markdown)
        verdict = "passed" if result.passed else "REGRESSION"
        print(
            f"gate {verdict}: {result.flips} negative flips in {result.n} samples, NFR {100 * result.nfr:.2f}% "
            f"(upper {100 * result.nfr_upper:.2f}% at {result.confidence:.0%}; limit {100 * result.max_nfr:.2f}%), "
            f"top-1 {100 * result.top1_reference:.2f}% -> {100 * result.top1_candidate:.2f}%"
        )
        for reason in result.reasons:
            print(f"  {reason}")
        return 0 if result.passed else 1
