"""`regnas device`: the emulated aarch64 device."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from regnas.cli import Command, register_command
from regnas.config import port


@register_command
class Device(Command):
    name = "device"
    help = "an emulated aarch64 edge device (qemu-user + TVM RPC) for checking aarch64 artifacts without a board"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("action", choices=["setup", "emulate"], help="setup: build the cached sysroot once; emulate: serve TVM RPC")
        p.add_argument("--host", default="127.0.0.1", help="emulate: address to listen on (default: 127.0.0.1)")
        p.add_argument("--port", type=port, default=9090, help="emulate: TVM RPC port (default: 9090)")
        p.add_argument("--sysroot", type=Path, default=None, help="the sysroot folder (default: in the user cache, ~/.cache/regnas)")
        p.add_argument("--force", action="store_true", help="setup: rebuild the sysroot even when one is there")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.device import emulator

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
