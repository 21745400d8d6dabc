"""`regnas bench`: an artifact's latency in its runtime, here or on a device."""

from __future__ import annotations

import argparse
from pathlib import Path

from regnas.cli import Command, add_rpc_options, json_option, register_command, remote_from, threads_option
from regnas.config import positive
from regnas.errors import RegnasError


@register_command
class Bench(Command):
    name = "bench"
    help = "measure an artifact's latency (p50/p90/p99/mean) in its runtime, here or on a device over TVM RPC"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", type=Path, help="an artifact: .onnx, .pte, .so (TVM), .mlpackage or .engine")
        p.add_argument("--runtime", default=None, help="runtime name (default: chosen by the file suffix)")
        threads_option(p, 1, "runtime threads (default: 1)")
        p.add_argument("--batch", type=positive, default=1, help="batch size (default: 1)")
        p.add_argument("--input-shape", default=None, help="C,H,W for models whose input shape is dynamic")
        p.add_argument("--warmup", type=positive, default=20, help="untimed runs (default: 20)")
        p.add_argument("--repeats", type=positive, default=200, help="timed runs (default: 200)")
        json_option(p)
        add_rpc_options(p)

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
        result = bench(args.model, args.runtime, args.threads, remote_from(args), args.batch, shape, args.warmup, args.repeats)
        if args.json:
            write_json(args.json, result.to_json())
        print(json.dumps(result.to_json(), indent=2))
        return 0
