"""The subcommands of `regnas`, one module per family of commands; importing this registers them all."""

import importlib

ORDER = ("build", "train", "report", "targets", "bench", "gate", "device")
"""The modules in the order `regnas --help` lists their commands."""

for _module in ORDER:
    importlib.import_module(f"regnas.commands.{_module}")
