"""Training-time augmentation policies: one per kind of image, chosen by the data unless named.

A policy maps a float batch N×C×H×W in [0, 1] to an augmented batch of the same shape, drawing its
randomness from a CPU generator, so a run draws the same augmentation on any device. `glyph`
shifts (digits and clothes are centred and upright: flips would change what they are), `photo`
crops and mirrors (a photograph's subject can sit anywhere and face either way), `none` trains on
the images as they are. A new policy is one function with `@register_augment`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from regnas.errors import RegnasError

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_POLICIES: dict[str, Augment] = {}


def register_augment(name: str) -> Callable[[Augment], Augment]:
    """Decorator: register an augmentation policy under `name`."""

    def wrap(fn: Augment) -> Augment:
        _POLICIES[name] = fn
        return fn

    return wrap


def augment_names() -> list[str]:
    return sorted(_POLICIES)


def default_augment(input_shape: tuple[int, ...]) -> str:
    """The policy for data of this shape: `photo` for colour images, `glyph` for grayscale ones."""
    return "photo" if input_shape[0] == 3 else "glyph"


def create_augment(name: str) -> Augment:
    """The policy registered as `name`."""
    if name not in _POLICIES:
        raise RegnasError(f"unknown --augment {name!r}; use one of {', '.join(augment_names())}")
    return _POLICIES[name]


def _crop(x: torch.Tensor, pad: int, gen: torch.Generator, mode: str) -> torch.Tensor:
    """Each image moved by up to `pad` px each way: padded by `pad` (`mode`: zeros or a reflection), then cropped back."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return xp[torch.arange(n, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


@register_augment("glyph")
def glyph(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/14 of the image, zero-filled (none below 14 px: it hurts there)."""
    pad = min(x.shape[-2:]) // 14
    return _crop(x, pad, gen, "constant") if pad else x


@register_augment("photo")
def photo(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random crop of the image padded by 1/8 of its side with its own reflection, mirrored left-right half the time."""
    pad = min(x.shape[-2:]) // 8
    out = _crop(x, pad, gen, "reflect") if pad else x
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@register_augment("none")
def none(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The images as they are."""
    return x
