"""The two-sample test (job ``assess_pool``) on pools whose answer is known, through the product's own jobs.

The digits as a folder (``prepare_dataset`` imagefolder) with half of the 5s held out in a folder of their own,
digit 3 cut to 5 training images (imbalance), one class-conditional diffusion model trained on the cut set
(the CPU preset of the studio), then:

a. 200 sampled 5s against the ~72 real 5s the dataset keeps (``same_class``): expected flagged (>= 0.9);
b. the held-out real 5s imported as a pool (``import_pool``): expected not flagged (<= 0.65);
c. 200 sampled 3s -- the starved class, 5 real images -- assessed through the same model's samples of other
   classes (``generator_other_classes``: the 5s and three more digits): expected flagged;
d. the same 3s against a model with no samples of other classes would be ``untestable`` (the unit tests
   cover that path).

    python benchmarks/bench_assess.py      # ~5 min on 2 CPU cores

Prints each assessment (domain AUC, method, counts, flag) and the wall time of each job.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import Settings  # noqa: E402
from backend.data.sources import load_digits  # noqa: E402
from backend.generation.imagefiles import encode_png  # noqa: E402
from backend.runtime import prepare  # noqa: E402
from benchmarks.jobrun import run  # noqa: E402

IMBALANCE = {"minority": "3", "keep": 5, "seed": 0}
HELD_OUT = "5"
# The studio's CPU preset for train_diffusion (backend/api/routes/jobs.py CPU_SUGGESTIONS).
MODEL = {"image_size": 16, "width": 0.25, "layers_per_block": 1, "attention": False, "epochs": 40,
         "batch_size": 32, "lr": 0.002, "class_balance": 0.7, "seed": 0, "grid_per_class": 0}  # fmt: skip
SAMPLE = {"sampler": "dpmpp", "steps": 20, "guidance": 2.0, "output_size": 32}


def main() -> None:
    src = load_digits()
    with tempfile.TemporaryDirectory(prefix="bench-assess-") as tmp:
        root, held = Path(tmp) / "digits", Path(tmp) / "held_out"
        rng = np.random.default_rng(0)
        five = src.classes.index(HELD_OUT)
        fives = np.flatnonzero(src.train_y == five)
        out_of_set = set(rng.choice(fives, len(fives) // 2, replace=False).tolist())
        for split, x, y in (("train", src.train_x, src.train_y), ("test", src.test_x, src.test_y)):
            for i, (im, label) in enumerate(zip(x, y, strict=True)):
                held_here = split == "train" and i in out_of_set
                folder = (held / HELD_OUT) if held_here else root / split / src.classes[int(label)]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i}.png").write_bytes(encode_png(np.asarray(im)))
        print(f"digits folder with {len(fives) - len(out_of_set)} of {len(fives)} training 5s; "
              f"{len(out_of_set)} held out; digit 3 cut to {IMBALANCE['keep']}")  # fmt: skip

        settings = Settings(workspace=Path(tmp) / "ws", workers=0, device="cpu", start_dir=Path(tmp))
        db = prepare(settings)
        dataset_id = run(db, settings, "prepare_dataset", {"source": "imagefolder", "path": str(root)})["dataset_id"]
        source = {"dataset_id": dataset_id, "imbalance": IMBALANCE}
        model = run(db, settings, "train_diffusion", MODEL | {"source": source})["diffusion_id"]
        pools = {}
        for cls, n in (("5", 200), ("3", 200), ("0", 100), ("1", 100), ("2", 100)):
            params = SAMPLE | {"diffusion_id": model, "class": cls, "count": n, "seed": 17 * int(cls)}
            pools[cls] = run(db, settings, "generate_diffusion", params)["pool_id"]
        real = run(db, settings, "import_pool", {"path": str(held / HELD_OUT), "name": "held-out real 5s"})["pool_id"]

        cases = (
            ("a. sampled 5s", pools["5"], None),
            ("b. held-out real 5s", real, "5"),
            ("c. sampled 3s (starved)", pools["3"], None),
        )
        for label, pool_id, cls in cases:
            params = {"pool_id": pool_id, "dataset_id": dataset_id, "imbalance": IMBALANCE}
            a = run(db, settings, "assess_pool", params | ({"label": cls} if cls else {}))["assessment"]
            extra = f" per class {a['per_class']}" if a.get("per_class") else ""
            print(f"  {label:26s} AUC {a['domain_auc']}  {a['method']}  real {a['n_real']} generated "
                  f"{a['n_synthetic']}  flagged {a['flagged']}{extra}")  # fmt: skip
        db.dispose()


if __name__ == "__main__":
    main()
