"""Does a diffusion model trained here help the minority class? (DiffuLT idea, and the external-data case.)

Digits demo (scikit-learn's 8x8 digits at 32 px), one digit cut to a handful of training images. Per seed:

- imbalanced         : the cut training set as is
- oversample         : the kept minority images repeated up to the median class count
- logit_adjusted     : the cut set with the logit-adjusted loss (Menon et al., tau 1)
- diffusion_random   : the cut set + samples of the minority digit from a class-conditional model trained on the
                       cut set (all classes, rare ones drawn more often, --class-balance), up to the median count
- diffusion_al       : the same model, --candidates x as many samples, the fill picked by Rebalance's active
                       learning loop (--acquisition, default target_prob)
- diffusion_external : a one-class model trained on "a separate folder of that digit": the minority digit's
                       training images the cut removed (never test images, never the kept ones)
- diffusion_external_sdedit : the external model, each sample started from a kept real image (--strength)
- diffusion_every_class : diffusion_random's minority samples + as many samples of EVERY other class from the
                       cut-set model, each labelled with its class (--every-class-count)
- diffusion_external_every_class : the external model's minority samples + the cut-set model's samples of
                       every other class

``--base oversample`` adds the synthetic images to the oversampled cut set instead of the cut set.
``--cache DIR`` keeps the trained diffusion models, so a rerun with other variants skips training.
Diffusion variants train with the recipes --synthetic-weight / --finetune-real-epochs. The classifier is
Rebalance's ``small`` CNN; the figure is the minority digit's test accuracy (and overall), mean +- std over the
seeds; ``judged_minority`` is the share of samples a pixel classifier trained on real digits calls the minority.

    python benchmarks/bench_diffusion.py                                   # every variant, 3 seeds, CPU
    python benchmarks/bench_diffusion.py --base oversample --cache /tmp/bd \
        --variants oversample diffusion_every_class diffusion_external_every_class

Measured on the 2-core CPU VM (session of 2026-11-30, nothing else running), digit 3 kept at 5 of its ~145
training images, cut-set model 16 px / width 0.25 / 40 epochs, external model 141 removed 3s / 400 epochs,
DPM++ 20 steps, guidance 2, classifier 15 epochs; minority accuracy % per seed 0 / 1 / 2, then mean +- std:

  added to the cut set (default --base imbalanced):
    imbalanced                       0.0 /  0.0 /  0.0     0.0 +-  0.0
    oversample                      37.8 / 67.6 / 59.5    55.0 +- 15.4
    logit_adjusted                  10.8 /  5.4 / 18.9    11.7 +-  6.8
    diffusion_random                 0.0 /  0.0 /  2.7     0.9 +-  1.6   (judged_minority 0.86 / 0.91 / 0.96)
    diffusion_external               0.0 /  0.0 /  0.0     0.0 +-  0.0   (judged_minority 0.86 / 0.68 / 0.85)
    diffusion_every_class           29.7 / 64.9 / 32.4    42.3 +- 19.6
    diffusion_external_every_class  40.5 / 13.5 / 62.2    38.7 +- 24.4
  added to the oversampled cut set (--base oversample):
    diffusion_random                32.4 / 67.6 / 45.9    48.6 +- 17.7
    diffusion_external              32.4 / 62.2 / 59.5    51.4 +- 16.4
    diffusion_every_class           48.6 / 81.1 / 56.8    62.2 +- 16.9
    diffusion_external_every_class  73.0 / 83.8 / 67.6    74.8 +-  8.3   (overall 95.2 +- 1.3 vs 93.2 +- 1.4)

Why minority-only synthetic images do nothing: the CNN learns the generator's low-level look as the label.
Controls (same classifier): the cut set + the 138 removed REAL 3s gives 94.6 % (seed 0); the same 3s after a
box-to-8x8 / 17-level / bicubic round trip (pixels off by 8.6 levels on average) 8.1 %; after box-to-16 / bilinear
up 27.0 % -- but the same round trips applied to 138 images of EVERY class as well give 70.3 % and 75.7 % (seed
1: 83.8 % and 86.5 %). So the synthetic images must not predict their label by how they look: samples of every
class from the same generator, and the real minority kept in view by oversampling, turn the external-data
model from 0 % into 74.8 +- 8.3 % minority accuracy against oversample's 55.0 +- 15.4 % (higher on every seed).
The model trained on the cut set alone (5 real 3s) helps less and less reliably (62.2 +- 16.9 %).

``--dataset cifar10`` (JPEG folders under ``--data-root``): a CIFAR-10 subset, the first ``--per-class``
training images of each class, cat cut to ``--keep`` (default 50), tested on the full test set; the judge is
the ``small`` CNN trained on the uncut subset. Measured on the 2-core CPU VM (2026-11-30, beside other runs;
one torch thread):

    python benchmarks/bench_diffusion.py --dataset cifar10 --per-class 300 --keep 50 --base oversample \
        --diffusion-epochs 30 --external-epochs 200 --classifier-epochs 20 --cache /tmp/bdc --variants \
        imbalanced oversample logit_adjusted diffusion_random diffusion_al diffusion_every_class \
        diffusion_external_every_class

  3,000 training images (300 per class, cat kept at 50 of 300), 10,000 test images, diffusion at 16 px / width
  0.25 (4-8 minutes of training per model here), 250 synthetic cats (the fill to 300), cat accuracy % per seed
  0 / 1 / 2, then mean +- std (overall accuracy mean):
    imbalanced                       0.0 /  0.0 /  0.0     0.0 +- 0.0   (57.1)
    oversample                      20.2 / 21.5 / 23.2    21.6 +- 1.5   (57.9)
    logit_adjusted                  23.9 / 22.5 / 21.6    22.7 +- 1.2   (57.6)
    diffusion_random                24.8 / 17.3 / 21.4    21.2 +- 3.8   (57.4)  judged cat 0.25 / 0.21 / 0.28
    diffusion_al                    21.0 / 16.6 / 21.4    19.7 +- 2.7   (57.5)  judged cat 0.52 / 0.37 / 0.38
    diffusion_every_class           27.7 / 22.7 / 22.9    24.4 +- 2.8   (54.7)
    diffusion_external_every_class  26.0 / 27.9 / 25.9    26.6 +- 1.1   (54.5)
  (the judge, the same CNN trained on the uncut subset: cat 33.3 %, overall 58.6 %.) At this scale the every-class
  recipe raises cat accuracy over oversample (+4.9 points for the external-data model, higher on every seed) and
  over logit adjustment (+3.9), but costs 3.4 points of overall accuracy: 16 px samples of nine other classes
  are worse training images than the real ones they sit beside. Minority-only samples (random or AL picks,
  on the oversampled set) do not help. This is a CPU-sized run; at 32 px with a wider model (a GPU) the samples
  would be closer to real: examples/cifar10_cat_diffusion_gpu.yaml is that run (full CIFAR-10, not run yet).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.allocator import keep_freed_memory  # noqa: E402
from backend.data.cache import DecodedDataset  # noqa: E402
from backend.data.imbalance import apply_imbalance  # noqa: E402
from backend.data.sources import load_digits  # noqa: E402
from backend.data.variants import full, imbalanced, oversample, with_synthetic  # noqa: E402
from backend.generation.ddpm import DiffusionTrainer, fit  # noqa: E402
from backend.generation.ddpm_config import DiffusionConfig, SampleConfig  # noqa: E402
from backend.generation.ddpm_sample import sample  # noqa: E402
from backend.selection.loop import SelectionConfig, run_selection  # noqa: E402
from backend.training.trainer import TrainConfig, evaluate, predict  # noqa: E402
from backend.training.trainer import fit as fit_classifier  # noqa: E402

VARIANTS = (
    "imbalanced",
    "oversample",
    "logit_adjusted",
    "diffusion_random",
    "diffusion_al",
    "diffusion_external",
    "diffusion_external_sdedit",
    "diffusion_every_class",
    "diffusion_external_every_class",
)


def digits_dataset() -> DecodedDataset:
    src = load_digits()
    return DecodedDataset(src.train_x, src.train_y, src.test_x, src.test_y, src.classes, info=src.info)


def cifar_subset(root: Path, per_class: int, test_per_class: int) -> DecodedDataset:
    """CIFAR-10 from JPEG folders (``root/train/<class>/``, ``root/test/<class>/``): the first ``per_class``
    training images of each class by file name (a fixed subset, the same for every seed) and the first
    ``test_per_class`` test images of each class (0: all)."""
    root = Path(root)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise SystemExit(f"--data-root {root} must hold train/ and test/ with one folder per class")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())

    def read(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for c, cls in enumerate(classes):
            files = sorted((root / split / cls).iterdir())
            for f in files[:n] if n else files:
                with Image.open(f) as im:
                    xs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
                ys.append(c)
        return np.stack(xs), np.asarray(ys, dtype=np.int64)

    train_x, train_y = read("train", per_class)
    test_x, test_y = read("test", test_per_class)
    return DecodedDataset(train_x, train_y, test_x, test_y, classes, info={"name": "cifar10-subset"})


def train_diffusion(images: np.ndarray, labels: np.ndarray, classes: list[str], epochs: int, args, seed: int):
    """A diffusion model trained on ``images``; returns (model, seconds, final epoch loss). With ``--cache DIR``
    a model trained before on the same images and settings is loaded instead (its seconds are the training's)."""
    key = hashlib.sha1(images.tobytes() + labels.tobytes() + repr((classes, epochs, seed, _model_args(args))).encode())
    cached = Path(args.cache) / f"{key.hexdigest()[:20]}.pt" if args.cache else None
    if cached is not None and cached.exists():
        return torch.load(cached, weights_only=False)
    t0 = time.perf_counter()
    config = DiffusionConfig(
        image_size=args.diffusion_size,  # digits are 8x8 at heart; 16 px keeps a CPU run in minutes
        width=args.width,
        layers_per_block=1,
        attention=False,
        epochs=epochs,
        batch_size=args.diffusion_batch,
        lr=2e-3,
        warmup_steps=20,
        seed=seed,
        class_balance=args.class_balance,
        hflip=args.dataset == "cifar10",  # a mirrored cat is a cat; a mirrored 3 is no digit
        grid_per_class=0,
    )
    trainer = DiffusionTrainer(config, images, labels, classes, args.device)
    history = fit(trainer)
    out = (trainer.model(), time.perf_counter() - t0, history[-1].loss)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, cached)
    return out


def _model_args(args) -> tuple:
    return (args.diffusion_size, args.width, args.diffusion_batch, args.class_balance) + (
        ("hflip",) if args.dataset == "cifar10" else ()
    )


def draw(model, minority: str, count: int, args, seed: int, start_images: np.ndarray | None = None) -> np.ndarray:
    strength = 1.0 if start_images is None else args.strength
    cfg = SampleConfig(sampler="dpmpp", steps=args.steps, guidance=args.guidance, seed=seed, strength=strength)
    return sample(model, minority, count, cfg, output_size=32, start_images=start_images)


def al_picks(ds, base, candidates: np.ndarray, m: int, count: int, args, seed: int) -> np.ndarray:
    """``count`` of ``candidates`` picked by Rebalance's active-learning loop (``--acquisition``)."""
    config = SelectionConfig(
        budget=count,
        per_round=max(count // 3, 1),
        acquisition=args.acquisition,
        epochs=5,
        batch_size=64,
        seed=seed,
        num_classes=len(ds.classes),
    )
    result = run_selection(base.images, base.labels, m, candidates, list(range(len(candidates))), config)
    return candidates[[p["index"] for p in result.picks]]


def run_seed(ds: DecodedDataset, args, seed: int) -> dict[str, dict]:
    spec = {"minority": args.minority, "keep": args.keep, "seed": seed}
    imb = apply_imbalance(ds.train_y, ds.classes, spec)
    m = ds.classes.index(args.minority)
    mean, std = _stats(ds)
    base = imbalanced(ds, imb)
    counts = base.counts(len(ds.classes))
    fill = int(np.median(counts)) - int(counts[m])
    out: dict[str, dict] = {}
    cut_model = None  # the model trained on the cut set, shared by diffusion_random, _al and *_every_class

    def cut_set_model() -> tuple:
        kept = imb.kept_idx
        return train_diffusion(ds.train_x[kept], ds.train_y[kept], ds.classes, args.diffusion_epochs, args, seed)

    external = None  # the one-class model of the removed minority images, shared by the external variants
    for name in args.variants:
        t0 = time.perf_counter()
        loss, extra, recipe = "ce", {}, {}
        if name == "imbalanced":
            variant = base
        elif name == "oversample":
            variant = oversample(ds, imb)
        elif name == "logit_adjusted":
            variant, loss = base, "logit_adjusted"
        else:
            recipe = {"synthetic_weight": args.synthetic_weight, "finetune_real_epochs": args.finetune_real_epochs}
            if name.endswith("every_class"):
                cut_model = cut_model or cut_set_model()
            if name.startswith("diffusion_external"):
                # "A separate folder of that digit": the minority digit's training images the cut removed
                # (never the test split, never the kept ones), as a one-class model.
                removed = np.setdiff1d(np.flatnonzero(ds.train_y == m), imb.kept_idx)
                if external is None:
                    external = train_diffusion(
                        ds.train_x[removed],
                        np.zeros(len(removed), np.int64),
                        [args.minority],
                        args.external_epochs,
                        args,
                        seed,
                    )
                model, secs, last = external
                # _sdedit: each sample starts from a kept real image, re-noised to --strength (SDEdit).
                starts = ds.train_x[imb.kept_idx[ds.train_y[imb.kept_idx] == m]] if name.endswith("sdedit") else None
                images = draw(model, args.minority, fill, args, seed, start_images=starts)
                extra = {"diffusion_images": len(removed)}
            elif name == "diffusion_every_class":
                model, secs, last = cut_model
                images = draw(model, args.minority, fill, args, seed)
            else:
                cut_model = cut_model or cut_set_model()
                model, secs, last = cut_model
                if name == "diffusion_random":
                    images = draw(model, args.minority, fill, args, seed)
                else:
                    candidates = draw(model, args.minority, args.candidates * fill, args, seed)
                    images = al_picks(ds, base, candidates, m, fill, args, seed)
            start = oversample(ds, imb) if args.base == "oversample" else base
            variant = with_synthetic(start, images, [{"generator": "ddpm", "index": i} for i in range(len(images))], m)
            if name.endswith("every_class"):
                # As many samples of every other class from the cut-set model, labelled with their class: the
                # generator's low-level look then predicts no class, so the classifier must learn the shapes.
                for c, cls in enumerate(ds.classes):
                    if c != m:
                        more = draw(cut_model[0], cls, args.every_class_count or fill, args, seed + 1000 * c)
                        variant = with_synthetic(variant, more, [{"generator": "ddpm", "class": cls}] * len(more), c)
                extra["every_class"] = args.every_class_count or fill
            judge = judge_of(ds, args)
            extra |= {
                "synthetic": len(images),
                "diffusion_seconds": round(secs, 1),
                "diffusion_loss": round(last, 4),
                "judged_minority": round(float((judge(images) == m).mean()), 3),
            }
        # Batch 64: the cut digits set has ~1,150 images, so batch 256 would take four steps per epoch.
        config = TrainConfig(
            model="small",
            epochs=args.classifier_epochs,
            batch_size=64,
            loss=loss,
            seed=seed,
            device=args.device,
            **recipe,
        )
        result = fit_classifier(variant, config, mean=mean, std=std, num_classes=len(ds.classes))
        scores = evaluate(result.model, ds.test_x, ds.test_y, mean=mean, std=std, num_classes=len(ds.classes))
        out[name] = {
            "minority_acc": scores.per_class[m],
            "overall_acc": scores.accuracy,
            "seconds": round(time.perf_counter() - t0, 1),
        } | extra
        print(json.dumps({"seed": seed, "variant": name} | out[name]), flush=True)
    return out


def _pixels(images: np.ndarray) -> np.ndarray:
    return images[..., 0].reshape(len(images), -1) / 255.0


_JUDGES: dict[int, Callable[[np.ndarray], np.ndarray]] = {}


def judge_of(ds: DecodedDataset, args) -> Callable[[np.ndarray], np.ndarray]:
    """A classifier trained on ALL the real training images (none cut): the share of samples it calls the
    minority class says whether the generator draws that class at all. Digits: logistic regression on the
    pixels; CIFAR-10: the ``small`` CNN (pixels separate CIFAR classes too poorly to judge anything)."""
    if id(ds) not in _JUDGES:
        if args.dataset == "digits":
            lr = LogisticRegression(max_iter=2000).fit(_pixels(ds.train_x), ds.train_y)
            _JUDGES[id(ds)] = lambda x: lr.predict(_pixels(x))
        else:
            mean, std = _stats(ds)
            config = TrainConfig(
                model="small", epochs=args.classifier_epochs, batch_size=64, seed=0, device=args.device
            )
            net = fit_classifier(full(ds), config, mean=mean, std=std, num_classes=len(ds.classes)).model
            _JUDGES[id(ds)] = lambda x: predict(net, x, mean=mean, std=std)
            full_scores = evaluate(net, ds.test_x, ds.test_y, mean=mean, std=std, num_classes=len(ds.classes))
            m = ds.classes.index(args.minority)
            print(
                json.dumps(
                    {
                        "judge (no class cut)": {
                            "minority_acc": full_scores.per_class[m],
                            "overall_acc": full_scores.accuracy,
                        }
                    }
                ),
                flush=True,
            )
    return _JUDGES[id(ds)]


def _stats(ds: DecodedDataset) -> tuple[np.ndarray, np.ndarray]:
    """Channel mean and std (0-1 units) of the full training set, as every variant uses."""
    return ds.train_x.reshape(-1, 3).mean(0) / 255.0, ds.train_x.reshape(-1, 3).std(0) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=("digits", "cifar10"))
    parser.add_argument("--data-root", default="/tmp/cifar/cifar10", help="cifar10: folder with train/ and test/")
    parser.add_argument("--per-class", type=int, default=500, help="cifar10: training images per class (subset)")
    parser.add_argument("--test-per-class", type=int, default=0, help="cifar10: test images per class (0: all)")
    parser.add_argument("--minority", help="class to cut (default: 3 for digits, cat for cifar10)")
    parser.add_argument("--keep", type=int, help="training images of the minority kept (default 5 digits, 50 cifar10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--diffusion-epochs", type=int, default=40, help="epochs of the model of the cut set")
    parser.add_argument("--external-epochs", type=int, default=400, help="epochs of the one-class external model")
    parser.add_argument("--diffusion-size", type=int, default=16, choices=(16, 32), help="diffusion model side in px")
    parser.add_argument("--diffusion-batch", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.25, help="UNet channel multiplier")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="DPM++ sampling steps")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance of the samples")
    parser.add_argument(
        "--class-balance", type=float, default=0.7, help="diffusion training draws images with weight count^-this"
    )
    parser.add_argument("--strength", type=float, default=0.6, help="diffusion_external_sdedit: SDEdit strength")
    parser.add_argument("--candidates", type=int, default=3, help="diffusion_al: candidates per pick")
    parser.add_argument("--acquisition", default="target_prob", help="diffusion_al: acquisition function")
    parser.add_argument("--synthetic-weight", type=float, default=1.0, help="recipe: loss weight of synthetic images")
    parser.add_argument("--finetune-real-epochs", type=int, default=0, help="recipe: real-only last-layer epochs")
    parser.add_argument(
        "--every-class-count", type=int, default=0, help="*_every_class: samples per other class (0: the minority fill)"
    )
    parser.add_argument(
        "--base",
        default="imbalanced",
        choices=("imbalanced", "oversample"),
        help="what the synthetic images are added to: the cut set, or the cut set with its minority oversampled",
    )
    parser.add_argument("--cache", help="a folder to keep trained diffusion models in (reruns skip training)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny models: 1 is fastest)")
    args = parser.parse_args()
    keep_freed_memory()  # as every Rebalance process does at start-up (backend/core/allocator.py)
    torch.set_num_threads(args.threads)
    if args.dataset == "digits":
        ds = digits_dataset()
        args.minority, args.keep = args.minority or "3", args.keep or 5
    else:
        ds = cifar_subset(Path(args.data_root), args.per_class, args.test_per_class)
        args.minority, args.keep = args.minority or "cat", args.keep or 50
    if args.minority not in ds.classes:
        raise SystemExit(f"--minority {args.minority!r} is not a class; classes are {ds.classes}")
    per_seed = [run_seed(ds, args, seed) for seed in args.seeds]
    counts = np.bincount(ds.train_y, minlength=len(ds.classes))
    print(
        f"\n{args.dataset} ({len(ds.train_y)} training images, {int(np.median(counts))} per class median), class "
        f"{args.minority} cut to {args.keep} training images, seeds {args.seeds}, {args.device}"
    )
    print(
        f"diffusion: {args.diffusion_size} px, {args.diffusion_epochs} epochs, class_balance {args.class_balance}, "
        f"guidance {args.guidance}, synthetic images added to the {args.base} set"
    )
    print(f"{'variant':32s} {'minority acc %':>18s} {'overall acc %':>18s}")
    for name in args.variants:
        mino = np.array([r[name]["minority_acc"] for r in per_seed], dtype=float)
        allc = np.array([r[name]["overall_acc"] for r in per_seed], dtype=float)
        print(
            f"{name:32s} {mino.mean():8.1f} +- {mino.std(ddof=1) if len(mino) > 1 else 0:5.1f}"
            f"     {allc.mean():8.1f} +- {allc.std(ddof=1) if len(allc) > 1 else 0:5.1f}"
        )


if __name__ == "__main__":
    main()
