"""`regnas train`: a supernet alone (also under torchrun)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from regnas.cli import Command, register_command
from regnas.config import minutes, positive, positive_float


@register_command
class Train(Command):
    name = "train"
    help = "train a weight-sharing supernet (sandwich rule, in-place distillation); runs under torchrun unchanged"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from regnas.plan import default_budget_text

        p.add_argument("--out", type=Path, required=True, help="output directory for the checkpoint")
        p.add_argument("--batch-size", type=positive, default=None, help="default: 32 below 4096 training images, else 128")
        p.add_argument(
            "--lr",
            type=positive_float,
            default=None,
            help="peak learning rate of the one-cycle schedule for a net trained alone; a space's recipe may train its supernet "
            "at a multiple of it (default: the recipe's, 0.003 for AdamW)",
        )
        p.add_argument(
            "--time-budget",
            type=minutes,
            default=None,
            metavar="MIN",
            help=f"minutes of training; epochs are planned from timed steps here (default: {default_budget_text()}, unless --epochs)",
        )
        p.add_argument(
            "--sort-channels", action="store_true", help="after the warm start (the largest subnet alone), order channels by importance"
        )
        from regnas.config import add_options
        from regnas.workflow.build import BuildOptions

        add_options(p, BuildOptions, {"data", "image_size", "val_size", "seed", "space", "epochs", "precision", "augment"}, defaults=True)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from regnas.augment import create_augment
        from regnas.builddir import DATA_CACHE, locked
        from regnas.data import load_dataset
        from regnas.distributed import init_world
        from regnas.io import ensure_writable_dir
        from regnas.plan import TimeBudget, plan_training, train_config
        from regnas.spaces import space_class, space_for
        from regnas.train import CHECKPOINT, check_precision, train_supernet

        if args.space:
            space_class(args.space)
        check_precision(args.precision)
        if args.augment:
            create_augment(args.augment)
        ensure_writable_dir(args.out, "--out")
        data = load_dataset(args.data, args.seed, val_size=args.val_size, image_size=args.image_size, cache=args.out / DATA_CACHE)
        space = space_for(data.input_shape, data.num_classes, args.space)
        world = init_world()
        try:
            cfg = train_config(
                args.out,
                data,
                space,
                world,
                epochs=args.epochs,
                seed=args.seed,
                augment=args.augment,
                precision=args.precision,
                batch_size=args.batch_size,
                lr=args.lr,
                sort_channels=args.sort_channels,
            )
            cfg, _, pace = plan_training(args.out, data, space, cfg, world, TimeBudget(args.epochs, args.time_budget))
            with locked(args.out, "train") if world.main else contextlib.nullcontext():
                train_supernet(data, args.out, cfg, space.name, world=world, pace=pace)
        finally:
            world.close()
        if world.main:
            print(f"wrote {args.out / CHECKPOINT}")
        return 0
