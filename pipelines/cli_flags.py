"""The command lines' one vocabulary, shared by ``train.py`` and ``python -m pipelines.preview``:
the flag of every recipe field (timm's names where timm has the option) and of every loader
setting a flag sets; one :class:`dali_cutmix.MixConfig` from the mixing flags, and a library
error said with the flag's name."""

from __future__ import annotations

import argparse

from dali_cutmix.backends import NAMES as BACKENDS
from dali_cutmix.backends import recipe_refused
from dali_cutmix.errors import UserError
from dali_cutmix.recipe import CENTRES, PASTES, MixConfig, RecipeError
from dali_cutmix.schedule import parse_schedule

# The flag that sets each loader setting (pipelines.settings.LoaderSettings).
SETTING_FLAGS = {"batch_size": "--batch-size", "image_size": "--image-size", "size_schedule": "--size-schedule",
                 "random_area": "--random-area", "num_threads": "--workers", "seed": "--seed"}  # fmt: skip
# The flag that sets each MixConfig field.
RECIPE_FLAGS = {"alpha": "--cutmix-alpha", "prob": "--cutmix-prob", "mode": "--cutmix-mode", "mixup_alpha": "--mixup",
                "switch_prob": "--mixup-switch-prob", "minmax": "--cutmix-minmax", "prob_schedule": "--prob-schedule",
                "off_epoch": "--mix-off-epoch", "paste": "--cutmix-paste",
                "resize_scale": "--resize-scale", "centre": "--cutmix-centre"}  # fmt: skip


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cutmix-alpha", "--cutmix", type=float, default=1.0, help="CutMix Beta(a, a); 0: no CutMix")
    p.add_argument("--mixup", type=float, default=0.0, dest="mixup_alpha", help="MixUp alpha; > 0 turns MixUp on")
    p.add_argument("--cutmix-prob", "--mixup-prob", type=float, default=1.0, help="chance of mixing at all")
    p.add_argument("--mixup-switch-prob", type=float, default=0.5, help="with both on, the chance of CutMix")
    p.add_argument(
        "--cutmix-mode", "--mixup-mode", choices=("batch", "elem"), default="batch", help="draw per batch or sample"
    )
    p.add_argument("--cutmix-minmax", type=float, nargs=2, metavar=("MIN", "MAX"), help="box sides in [MIN, MAX)")
    p.add_argument("--mix-no-self", action="store_true", help="partners are never the sample itself")
    p.add_argument(
        "--cutmix-paste",
        choices=PASTES,
        default="cut",
        help="cut: CutMix's box of the partner; resize: ResizeMix, the whole partner resized into the box",
    )
    p.add_argument("--resize-scale", type=float, nargs=2, metavar=("MIN", "MAX"), default=(0.1, 0.8),
                   help="ResizeMix's box sides as a fraction of the image's, uniform in [MIN, MAX)")  # fmt: skip
    p.add_argument("--cutmix-centre", choices=CENTRES, default="random",
                   help="random: CutMix's box centre, uniform; saliency: SaliencyMix, on the partner's saliency "
                        "peak")  # fmt: skip
    p.add_argument("--mix-off-epoch", "--mixup-off-epoch", type=int, help="no mixing from this epoch on")
    p.add_argument("--prob-schedule", type=parse_prob_schedule, default=(), help="chance by epoch: 0:1.0,100:0.5")
    p.add_argument("--cutmix-backend", choices=tuple(BACKENDS),
                   help="default: native on the CPU (python for CHW images or without a compiler), "
                        "python on the GPU")  # fmt: skip
    p.add_argument("--no-cutmix", action="store_true", help="no mixing at all (the baseline)")


def recipe_from_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> MixConfig | None:
    """The mixing flags as one checked recipe (None with ``--no-cutmix``); a bad one is a usage
    error naming its flag."""
    if args.no_cutmix:
        given = [flag for flag, dest in _recipe_flags(p) if getattr(args, dest, None) != p.get_default(dest)]
        if given:
            p.error(f"--no-cutmix trains without mixing: leave {' and '.join(given)} out (or --no-cutmix)")
        return None
    if args.cutmix_paste == "resize" and args.cutmix_minmax:
        p.error("--cutmix-paste resize takes its box's scale from --resize-scale: leave --cutmix-minmax out")
    if args.cutmix_paste != "resize" and tuple(args.resize_scale) != MixConfig.resize_scale:
        p.error("--resize-scale is ResizeMix's box scale: give it with --cutmix-paste resize")
    if args.cutmix_centre == "saliency" and args.cutmix_alpha == 0:
        p.error("--cutmix-centre saliency centres CutMix's --cutmix-alpha box: give --cutmix-alpha > 0")
    if args.cutmix_centre == "saliency" and (args.cutmix_paste == "resize" or args.cutmix_minmax):
        clash = "--cutmix-paste resize" if args.cutmix_paste == "resize" else "--cutmix-minmax"
        p.error(f"--cutmix-centre saliency centres CutMix's --cutmix-alpha box: leave {clash} out")
    for choice in (args.cutmix_paste, args.cutmix_centre):
        refused = args.cutmix_backend and recipe_refused(args.cutmix_backend, choice)
        if refused and getattr(args, "mix_in", "pipeline") == "pipeline":
            p.error(f"--cutmix-backend {args.cutmix_backend}: {refused} (leave --cutmix-backend out)")
    try:
        return MixConfig(
            alpha=args.cutmix_alpha,
            prob=args.cutmix_prob,
            mode=args.cutmix_mode,
            mixup_alpha=args.mixup_alpha,
            switch_prob=args.mixup_switch_prob,
            minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax else None,
            no_self=args.mix_no_self,
            prob_schedule=args.prob_schedule,
            off_epoch=args.mix_off_epoch,
            paste=args.cutmix_paste,
            resize_scale=tuple(args.resize_scale),
            centre=args.cutmix_centre,
        )
    except RecipeError as e:
        if e.field is None:
            p.error("--cutmix-alpha and --mixup are both 0: nothing to mix (--no-cutmix trains without mixing)")
        p.error(f"{RECIPE_FLAGS[e.field]} {e.rule}, got {e.value!r}")


def _recipe_flags(p: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(flag, dest) of every flag that sets a recipe field (``RECIPE_FLAGS`` and ``--mix-no-self``)."""
    wanted = set(RECIPE_FLAGS.values()) | {"--mix-no-self"}
    return [(a.option_strings[0], a.dest) for a in p._actions if wanted & set(a.option_strings)]


def parse_prob_schedule(text: str) -> tuple[tuple[int, float], ...]:
    """``"0:1.0,100:0.5"`` -> ``((0, 1.0), (100, 0.5))`` (:mod:`dali_cutmix.schedule`'s one parser;
    argparse turns the ValueError into a usage error naming the flag; the recipe checks the values)."""
    try:
        return parse_schedule(text, float, "the schedule", "EPOCH:PROB pairs such as 0:1.0,100:0.5")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("the schedule ")) from None


def setting_flag(name: str) -> str:
    """The flag of a :class:`pipelines.settings.SettingError`'s field (``--`` and the name for one
    no flag sets)."""
    return SETTING_FLAGS.get(name, "--" + name.replace("_", "-"))
