"""The emulated ARM device: an aarch64 sysroot run under qemu-user (`emulator.py`) and the RPC server started in it
(`server.py`, the only file run under qemu; it imports nothing of regnas), so artifacts built for ARM targets run here."""
