"""The TVM RPC server of the emulated aarch64 device; run by the aarch64 Python under qemu, never imported by regnas.

It imports only TVM (the sysroot holds nothing else), serves in this process, and forks one child per
session: qemu-user can fork, but cannot exec another aarch64 program without binfmt_misc, which
`python -m tvm.exec.rpc_server` needs for its worker process. It prints one line once it listens
(`listening HOST:PORT`) or fails (`error: ...`), which is what `regnas.device.emulator.start` waits for.
"""

import logging
import platform
import sys

import tvm
import tvm_ffi
from tvm.rpc.server import PopenRPCServerState


def main(host: str, port: int) -> int:
    description = f"qemu-user {platform.machine()}, Python {platform.python_version()}, apache-tvm {tvm.__version__}"
    tvm_ffi.register_global_func("regnas.emulated", lambda: description)
    logging.basicConfig(level=logging.WARNING, format="emulated device: %(message)s")
    try:
        state = PopenRPCServerState(host, port, port + 1, silent=True)
    except (OSError, ValueError) as exc:
        print(f"error: cannot listen on {host}:{port} ({exc})", flush=True)
        return 2
    print(f"listening {host}:{state.port}", flush=True)
    state.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
