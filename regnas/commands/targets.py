"""`regnas targets` and `regnas profile`: the targets, and the latency LUTs measured on them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from regnas.cli import Command, add_rpc_options, data_option, json_option, register_command, remote_from, seed_option, threads_option
from regnas.config import positive
from regnas.errors import RegnasError

logger = logging.getLogger(__name__)


def _space_for(args: argparse.Namespace):
    """The search space (default config) for the input shape and classes of the dataset `args` name."""
    from regnas.data import load_dataset
    from regnas.spaces import space_for

    data = load_dataset(args.data, 0, image_size=args.image_size)
    return space_for(data.input_shape, data.num_classes, args.space)


def _add_space_options(p: argparse.ArgumentParser) -> None:
    data_option(p, "the dataset the LUT is for (fixes the input size; default: digits)")
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
        json_option(p, "validate: also write the numbers as JSON")
        seed_option(p, "validate's random subnets")
        _add_space_options(p)
        add_rpc_options(p)

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
    path, result = validate_lut(
        target, space, args.lut, args.lut_dir, args.n, args.n_fit, args.seed, remote_from(args), sys.stderr.isatty()
    )
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
        threads_option(p, None, "runtime threads (default: the target's; recorded in the LUT)")
        _add_space_options(p)
        add_rpc_options(p)

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
        profile(target, space, out, remote_from(args), args.warmup, args.repeats, progress=sys.stderr.isatty())
        print(f"wrote {out}")
        return 0
