"""Stable Diffusion throughput: the reference study's settings against generate_sd's defaults, and code
speed at equal settings.

1. Settings: study = batch 1, 100 steps, PNDM (diffusers' SD default), guidance 7.5; defaults = batched,
   DPM-Solver++ (2M) 25 steps, guidance 7.5. Same model, resolution, dtype, device; images/s over the full
   `generate` path (denoising, VAE decode, on-device antialiased downscale to 32 px). Optionally a TAESD
   decoder (--vae). This ratio is mostly fewer steps, not faster code.
2. Code at equal settings: the same pipeline, scheduler (DPM++ 2M), steps (25) and guidance, as
   (a) the study's loop -- one plain diffusers ``pipe(prompt)`` call per image, PIL output, PIL resize to
   32 px -- and (b) ``generate`` in batches. The two alternate (A B A B ...) ``--reps`` times after a
   warm-up of each; the ratio printed is the median of the per-pair ratios.

3. FLOP use: the UNet's FLOPs for one latent at the run's resolution are counted once with
   ``torch.utils.flop_counter.FlopCounterMode``; the defaults run's achieved UNet TFLOP/s is images/s x
   steps x 2 (classifier-free guidance doubles the UNet batch) x that count, printed against the card's
   dense bf16/fp16 peak (``--peak-tflops``; H100/H200 default to 989, A100 to 312). UNet only: the VAE
   decode and the scheduler are time spent outside that count, so the figure is a lower bound.
4. Turbo-style: the same pipeline (DPM++ 2M) at ``--turbo-steps`` (default 1 and 4) steps with guidance 0
   (one UNet pass per step, no negative branch), batched: images/s and UNet TFLOP/s.

    python benchmarks/bench_sd.py                       # tiny random pipeline on CPU
    python benchmarks/bench_sd.py --model sd15-random --device cuda   # SD 1.5-sized, random weights
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.core.allocator import keep_freed_memory  # noqa: E402
from backend.generation.diffusion import generate, load_pipeline  # noqa: E402
from backend.generation.prompts import default_vocabulary  # noqa: E402
from benchmarks.sd15 import build_random_sd15_pipeline  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(pipe, items, *, steps: int, batch_size: int, resolution: int, device: str) -> tuple[float, float | None]:
    """(images/s, peak CUDA MiB or None) for generating `items`; one warm-up batch first."""
    params = dict(steps=steps, guidance=7.5, resolution=resolution, output_size=32, batch_size=batch_size)
    generate(pipe, items[:batch_size], **params)  # warm-up: kernels, allocator, compile caches
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = generate(pipe, items, **params)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return len(out) / elapsed, peak


PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16/fp16 tensor-core peaks (spec sheets)


def unet_flops_per_latent(pipe, resolution: int) -> float:
    """FLOPs of one UNet forward for ONE latent at ``resolution`` (counted, not estimated), via
    ``FlopCounterMode`` on a batch of one: matmuls and convolutions, as the counter defines them."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = pipe.unet
    dtype, device = unet.dtype, unet.device
    side = resolution // pipe.vae_scale_factor
    latent = torch.zeros(1, unet.config.in_channels, side, side, dtype=dtype, device=device)
    context = torch.zeros(1, 77, unet.config.cross_attention_dim, dtype=dtype, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(latent, torch.tensor([500], device=device), encoder_hidden_states=context)
    return float(counter.get_total_flops())


def peak_tflops(device: str, given: float | None) -> float | None:
    """The card's dense bf16/fp16 peak: ``given``, else looked up by name; None on a CPU or unknown card."""
    if given:
        return given
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def turbo(pipe, items, *, steps: int, batch_size: int, resolution: int, device: str) -> float:
    """Images/s of ``generate`` at ``steps`` steps with guidance 0 (one UNet pass per step), after a
    warm-up batch."""
    params = dict(steps=steps, guidance=0.0, resolution=resolution, output_size=32, batch_size=batch_size)
    generate(pipe, items[:batch_size], **params)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate(pipe, items, **params)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(items) / (time.perf_counter() - t0)


def study_loop(pipe, items, *, steps: int, resolution: int) -> float:
    """Images/s of the study's code: one diffusers call per image, PIL output, PIL downscale to 32 px."""
    from PIL import Image

    t0 = time.perf_counter()
    for item in items:
        image = pipe(
            item.prompt,
            num_inference_steps=steps,
            guidance_scale=7.5,
            height=resolution,
            width=resolution,
            generator=torch.Generator("cpu").manual_seed(item.seed),
            output_type="pil",
        ).images[0]
        image.resize((32, 32), Image.Resampling.LANCZOS)
    return len(items) / (time.perf_counter() - t0)


def batched(pipe, items, *, steps: int, batch_size: int, resolution: int, device: str) -> float:
    """Images/s of ``generate`` on ``items`` in batches of ``batch_size`` (no warm-up)."""
    t0 = time.perf_counter()
    generate(pipe, items, steps=steps, guidance=7.5, resolution=resolution, output_size=32, batch_size=batch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(items) / (time.perf_counter() - t0)


def equal_settings(pipe, items, *, batch_size: int, resolution: int, device: str, reps: int) -> None:
    """Print the code-speed comparison at 25 DPM++ 2M steps: study loop vs batched ``generate``."""
    steps = 25
    study_loop(pipe, items[:1], steps=steps, resolution=resolution)  # warm-ups
    batched(pipe, items[:batch_size], steps=steps, batch_size=batch_size, resolution=resolution, device=device)
    loop_r, fast_r = [], []
    for _ in range(reps):
        loop_r.append(study_loop(pipe, items, steps=steps, resolution=resolution))
        fast_r.append(batched(pipe, items, steps=steps, batch_size=batch_size, resolution=resolution, device=device))
    ratios = [f / s for f, s in zip(fast_r, loop_r, strict=True)]
    print(
        f"equal settings (DPM++ 2M, {steps} steps, guidance 7.5, {len(items)} images): "
        f"study loop (batch 1) {statistics.median(loop_r):8.3f} images/s, "
        f"generate (batch {batch_size}) {statistics.median(fast_r):8.3f} images/s"
    )
    print(
        f"ratio code at equal settings: {statistics.median(ratios):.2f}x (median of {reps} alternated pairs: "
        + ", ".join(f"{r:.2f}" for r in ratios)
        + ")"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny | sd15-random | HF id | local dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=None, help="default: 128 for tiny, 512 otherwise")
    ap.add_argument("--batch-size", type=int, default=None, help="defaults' batch; default 8 (16 on CUDA)")
    ap.add_argument("--study-images", type=int, default=None, help="images timed at study settings")
    ap.add_argument("--default-images", type=int, default=None, help="images timed at default settings")
    ap.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"])
    ap.add_argument("--vae", default=None, help="also time the defaults with this decoder: tiny | taesd-random | id")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet for the defaults run")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 on CPU)")
    ap.add_argument("--quick", action="store_true", help="fewer images")
    ap.add_argument("--reps", type=int, default=2, help="alternated pairs for the equal-settings comparison")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16/fp16 TFLOP/s")
    ap.add_argument("--turbo-steps", type=int, nargs="*", default=[1, 4], help="turbo-style runs (guidance 0)")
    args = ap.parse_args()
    keep_freed_memory()  # as every Rebalance process does at start-up (backend/core/allocator.py)

    cuda = args.device.startswith("cuda")
    if args.threads or not cuda:
        # One thread by default: on a shared small CPU box, spinning OpenMP workers make multi-thread
        # timings swing by 10x and penalise the batch-1 run most, inflating the ratio.
        torch.set_num_threads(args.threads or 1)
    resolution = args.resolution or (128 if args.model == "tiny" else 512)
    batch = args.batch_size or (16 if cuda else 8)
    n_study = args.study_images or (2 if args.quick else 4)
    n_default = args.default_images or (batch if args.quick else 4 * batch)

    with tempfile.TemporaryDirectory(prefix="bench-sd-") as tmp:
        workspace = Path(tmp)
        model = args.model
        if model == "sd15-random":
            t0 = time.perf_counter()
            model = str(build_random_sd15_pipeline(workspace / "sd15-random", device=args.device))
            print(f"built SD 1.5-sized random pipeline in {time.perf_counter() - t0:.1f}s")
        common = dict(device=args.device, dtype=args.dtype, workspace=workspace)
        items = default_vocabulary("cat").sample(max(n_study, n_default), seed=0)
        device_name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
        print(f"model={args.model} device={device_name} resolution={resolution} torch={torch.__version__}")

        pipe = load_pipeline(model, scheduler="pndm", **common)
        study, study_mem = run(
            pipe, items[:n_study], steps=100, batch_size=1, resolution=resolution, device=args.device
        )
        del pipe
        pipe = load_pipeline(model, scheduler="dpmpp_2m", compile=args.compile, **common)
        fast, fast_mem = run(
            pipe, items[:n_default], steps=25, batch_size=batch, resolution=resolution, device=args.device
        )
        equal_settings(
            pipe, items[:n_default], batch_size=batch, resolution=resolution, device=args.device, reps=args.reps
        )
        per_latent = unet_flops_per_latent(pipe, resolution)
        peak = peak_tflops(args.device, args.peak_tflops)

        def use(images_per_s: float, steps: int, cfg: int) -> str:
            tflops = images_per_s * steps * cfg * per_latent / 1e12
            share = f", {100 * tflops / peak:.1f} % of the {peak:.0f} TFLOP/s peak" if peak else ""
            return f"UNet {tflops:8.2f} TFLOP/s{share}"

        turbo_rates = {
            n: turbo(pipe, items[:n_default], steps=n, batch_size=batch, resolution=resolution, device=args.device)
            for n in args.turbo_steps
        }
        del pipe

        def mem(peak: float | None) -> str:
            return f", peak CUDA {peak:.0f} MiB" if peak is not None else ""

        print(f"study    (batch 1, PNDM 100 steps):        {study:8.3f} images/s{mem(study_mem)}")
        print(f"defaults (batch {batch}, DPM++ 2M 25 steps): {fast:8.3f} images/s{mem(fast_mem)}")
        print(f"UNet forward, one latent at {resolution} px: {per_latent / 1e9:.2f} GFLOP (counted)")
        print(f"defaults FLOP use (25 steps, guidance 7.5): {use(fast, 25, 2)}")
        for n, rate in turbo_rates.items():
            print(f"turbo-style ({n} step(s), guidance 0, batch {batch}): {rate:8.3f} images/s, {use(rate, n, 1)}")
        if args.vae:
            vae = args.vae
            if vae == "taesd-random":  # the real TAESD architecture (AutoencoderTiny defaults), random weights
                vae = str(workspace / "taesd-random")
                AutoencoderTiny().save_pretrained(vae)
            pipe = load_pipeline(model, scheduler="dpmpp_2m", vae=vae, compile=args.compile, **common)
            taesd, taesd_mem = run(
                pipe, items[:n_default], steps=25, batch_size=batch, resolution=resolution, device=args.device
            )
            print(f"defaults + vae={args.vae}:                 {taesd:8.3f} images/s{mem(taesd_mem)}")
            print(f"ratio defaults+vae / study: {taesd / study:.1f}x")
        print(f"ratio defaults / study (settings: 25 vs 100 steps, batched): {fast / study:.1f}x (target >= 10x)")
        print(f"peak process RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
