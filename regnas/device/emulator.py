"""An emulated aarch64 device: regnas's TVM RPC server run by qemu-user on this machine, as a Neoverse-N1 CPU.

The aarch64 targets' artifacts (the edge's cross-compiled TVM library, its ONNX Runtime int8 model)
otherwise need a board to run. Under emulation they run the real code path: `regnas check BUILD --rpc
127.0.0.1:9090` uploads them over TVM RPC and predicts with aarch64 instructions and ARM's kernels
(MLAS's NEON and dot-product paths, which round differently from x86's), so their flips against fp32
and against this host's run of the same artifact are real. Their latency is not a board's: the server
says it is emulated, `bench` labels its timings so, and `profile` refuses to write them into a LUT.

`regnas device setup` builds the sysroot once into the user cache (no root, nothing system-wide):
Debian's arm64 Python and the libraries it links, from Debian's archive through a private apt
configuration, and PyPI's aarch64 wheels of the host's apache-tvm and onnxruntime versions (RPC needs
both ends to agree; the same ONNX Runtime tells ARM from x86 rounding, not one release from another).
qemu-user reports this host's /proc/cpuinfo to the guest, which ARM CPU probing (cpuinfo, in ONNX
Runtime and XNNPACK) cannot parse: the sysroot carries the emulated CPU's own, which qemu's `-L` serves.
ExecuTorch is not there: its aarch64 Python bindings link PyPI's aarch64 torch, which links CUDA 13
(libcudart, cuDNN, NCCL: gigabytes of wheels to load a CPU runtime), so the phone's `.pte` programs are
reported as not run on this device; a board with ExecuTorch installed runs them (`python -m
regnas.device.server HOST PORT`). qemu itself is Debian's `qemu-user-static`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from regnas.errors import RegnasError
from regnas.io import cache_root, ensure_writable_dir, read_json, write_json

logger = logging.getLogger(__name__)

SETUP_COMMAND = "regnas device setup"
PYTHON = "3.11"
DEBIAN = ("http://deb.debian.org/debian", "bookworm")
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PACKAGES = (f"python{PYTHON}-minimal", f"libpython{PYTHON}-stdlib", "libstdc++6")
"""Debian arm64 packages of the sysroot; apt adds what they depend on."""
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
STAMP = "regnas-sysroot.json"
"""Written last by setup: a sysroot without it is unfinished."""
SERVER = Path(__file__).with_name("server.py")
CPU = "neoverse-n1"
"""The emulated CPU (qemu's name): an Armv8.2 server/edge core with NEON and the dot-product instructions."""
CPU_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs"
CPU_PART = "0xd0c"
"""Neoverse-N1's MIDR part number, as its /proc/cpuinfo says."""
CORES = 2
READY_TIMEOUT_S = 180.0
"""Starting the server imports TVM under emulation (about 8 s here); a slow host gets ample margin."""


def host_tvm_version() -> str:
    """The apache-tvm version installed here, which the device's must match."""
    try:
        return version("apache-tvm")
    except PackageNotFoundError:
        raise RegnasError("apache-tvm is not installed; pip install 'regnas[tvm]'") from None


def host_versions() -> dict[str, str]:
    """The packages the device's Python needs at this host's versions: apache-tvm always, onnxruntime when installed here."""
    out = {"apache-tvm": host_tvm_version()}
    try:
        out["onnxruntime"] = version("onnxruntime")
    except PackageNotFoundError:
        pass
    return out


def default_sysroot() -> Path:
    return cache_root() / f"aarch64-py{PYTHON}-tvm{host_tvm_version()}"


def _cpu_files(sysroot: Path) -> None:
    """The emulated CPU's /proc/cpuinfo and CPU lists, which qemu's -L serves in place of this host's."""
    (sysroot / "proc").mkdir(parents=True, exist_ok=True)
    cpus = sysroot / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True, exist_ok=True)
    block = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: " + CPU_FEATURES + "\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: " + CPU_PART + "\nCPU revision\t: 1\n\n"
    )
    (sysroot / "proc" / "cpuinfo").write_text("".join(block.format(i=i) for i in range(CORES)))
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{CORES - 1}\n")
    (cpus / "kernel_max").write_text("255\n")


def _find_qemu() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


def qemu() -> str:
    """The qemu-user binary for aarch64; RegnasError naming the Debian package when there is none."""
    found = _find_qemu()
    if not found:
        raise RegnasError(
            "qemu-aarch64 not found; install Debian's qemu-user-static (apt install qemu-user-static), then run " + SETUP_COMMAND
        )
    return found


def _run(cmd: list[str], what: str, **kwargs) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()
        why = tail[-1][:200] if tail else f"exit {p.returncode}"
        raise RegnasError(f"{what} failed ({why}); check the network to Debian and PyPI and re-run {SETUP_COMMAND}")


def _debian_packages(work: Path) -> list[Path]:
    """Download the arm64 packages and their dependencies with a private apt configuration (the host's is untouched)."""
    if not DEBIAN_KEYRING.is_file() or not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RegnasError(
            f"{SETUP_COMMAND} needs apt-get, dpkg-deb and {DEBIAN_KEYRING} (a Debian or Ubuntu host); install debian-archive-keyring"
        )
    apt = work / "apt"
    for d in ("lists/partial", "archives/partial", "sources"):
        (apt / d).mkdir(parents=True)
    (apt / "status").touch()
    url, suite = DEBIAN
    (apt / "sources" / "debian.sources").write_text(
        f"Types: deb\nURIs: {url}\nSuites: {suite}\nComponents: main\nArchitectures: arm64\nSigned-By: {DEBIAN_KEYRING}\n\n"
        f"Types: deb\nURIs: {url}-security\nSuites: {suite}-security\nComponents: main\nArchitectures: arm64\nSigned-By: {DEBIAN_KEYRING}\n"
    )
    options = [
        f"Dir::State::Lists={apt / 'lists'}",
        f"Dir::State::status={apt / 'status'}",
        f"Dir::Cache={apt}",
        f"Dir::Cache::Archives={apt / 'archives'}",
        "Dir::Etc::SourceList=/dev/null",
        f"Dir::Etc::SourceParts={apt / 'sources'}",
        "APT::Architecture=arm64",
        "APT::Architectures::=arm64",
        "Debug::NoLocking=1",
    ]
    base = ["apt-get", "-q", *(arg for o in options for arg in ("-o", o))]
    _run([*base, "update"], "apt-get update (Debian arm64 index)")
    _run([*base, "-y", "--download-only", "--no-install-recommends", "install", *PACKAGES], "downloading Debian arm64 packages")
    return sorted((apt / "archives").glob("*.deb"))


def install_qemu() -> str:
    """qemu-user for aarch64, installing Debian's qemu-user-static first when it is missing and this is root on Debian."""
    if not _find_qemu() and os.geteuid() == 0 and shutil.which("apt-get"):
        logger.info("emulated device: installing Debian's qemu-user-static")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
        _run(["apt-get", "install", "-y", "-qq", "qemu-user-static"], "apt-get install qemu-user-static", env=env)
    return qemu()


def setup(root: Path | None = None, force: bool = False) -> Path:
    """Build the emulated device's sysroot at `root` (default: the user cache) unless a finished one is there."""
    install_qemu()
    root = ensure_writable_dir(root or default_sysroot(), "sysroot folder")
    wanted = host_versions()
    if _stale(root, wanted) is None and not force:
        logger.info(f"emulated device: sysroot {root} is ready ({', '.join(f'{k} {v}' for k, v in wanted.items())})")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        sysroot = work / "sysroot"
        logger.info("emulated device: downloading Debian's arm64 Python and libraries")
        debs = _debian_packages(work)
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"unpacking {deb.name}")
        _cpu_files(sysroot)
        logger.info(f"emulated device: downloading PyPI's aarch64 wheels of {', '.join(f'{k} {v}' for k, v in wanted.items())}")
        platforms = [arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)]
        wheels = ["--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON, *platforms]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-compile",
                "--target",
                str(sysroot / "site"),
                *wheels,
                *(f"{k}=={v}" for k, v in wanted.items()),
            ],
            "downloading the aarch64 wheels",
        )
        stamp = {**wanted, "python": PYTHON, "cpu": CPU, "debian": list(DEBIAN), "packages": sorted(d.name for d in debs)}
        write_json(sysroot / STAMP, stamp)
        if root.exists():
            shutil.rmtree(root)
        os.replace(sysroot, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(f"emulated device: sysroot ready at {root}")
    return root


def _stale(root: Path, wanted: dict[str, str]) -> str | None:
    """Why the sysroot at `root` cannot serve this host (none there, or a package at another version), or None."""
    if not (root / STAMP).is_file():
        return "none"
    stamp = read_json(root / STAMP, "sysroot stamp")
    for package, ours in wanted.items():
        if stamp.get(package) != ours:
            return f"{package} {stamp.get(package) or 'missing'}, this host {ours}"
    return None if stamp.get("cpu") == CPU else f"CPU {stamp.get('cpu') or 'unnamed'}, regnas emulates {CPU}"


def require_sysroot(root: Path | None = None) -> Path:
    """A finished sysroot with the host's apache-tvm (and onnxruntime), and qemu; RegnasError naming the set-up command otherwise."""
    root = Path(root or default_sysroot())
    why = _stale(root, host_versions())
    if why == "none":
        how = SETUP_COMMAND if root == default_sysroot() else f"{SETUP_COMMAND} --sysroot {root}"
        raise RegnasError(f"no emulated-device sysroot at {root}; run {how} first")
    if why:
        raise RegnasError(f"the sysroot at {root} has {why}; run {SETUP_COMMAND} --force")
    qemu()
    return root


@dataclass
class Emulator:
    """A running emulated device: its RPC address and the qemu process serving it."""

    host: str
    port: int
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the server and the session processes it forked."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _check_port(host: str, port: int) -> None:
    """Refuse an address this host cannot listen on before starting qemu, whose Python takes seconds to find out
    (qemu-user shares this host's network, so the server would meet the same error)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RegnasError(f"emulated device: cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port") from None


def start(host: str = "127.0.0.1", port: int = 9090, root: Path | None = None, timeout: float = READY_TIMEOUT_S) -> Emulator:
    """Start the emulated device's RPC server and return once it listens on `host:port`."""
    root = require_sysroot(root)
    _check_port(host, port)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(root / "site"),
        "PYTHONNOUSERSITE": "1",
    }
    python = str(root / "usr" / "bin" / f"python{PYTHON}")
    cmd = [qemu(), "-cpu", CPU, "-L", str(root), python, str(SERVER), host, str(port), f"--emulated={CPU}"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    emulator, lines = Emulator(host, port, process), queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in process.stdout] + [lines.put(None)], daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while (line := lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if line.startswith("listening "):
                logger.info(f"emulated device: aarch64 ({CPU}) RPC server on {line.removeprefix('listening ')} (correctness, not speed)")
                return emulator
            if line.startswith("error: "):
                raise RegnasError(f"emulated device: {line.removeprefix('error: ')}; pass another --port")
        raise RegnasError(f"the emulated device exited with status {process.wait()} before listening; re-run {SETUP_COMMAND} --force")
    except queue.Empty:
        emulator.stop()
        raise RegnasError(f"the emulated device did not listen within {timeout:.0f} s; is the host overloaded?") from None
    except RegnasError:
        emulator.stop()
        raise
