"""GPU path check: every accelerated variant of a training run against the fp32 CPU result on the same seed.

    python -m benchmarks.gpu_check [--dry-run] [--out DIR]

Variants, each a short `companion.fit` run of a small two-task CNN (`HardSharing`) from the same initial weights
on the same batches, compared with the same run in fp32 on the CPU:

- fp32 on the chosen device (`companion.device.pick_device("auto")`: CUDA, else MPS, else CPU), data resident
  on the device (`TensorBatches(..., device=dev)`);
- bf16 autocast; fp16 autocast with fit's GradScaler;
- multi-task gradient aggregation (UPGrad, `GradAggregation`) under AMP: fit hands the balancer the loss scale
  and the balancer aggregates the *unscaled* per-task gradients (G / scale), then writes direction * scale back
  for the scaler to unscale; under fp16 the scale is 65536, so a missing unscale would show at once;
- channels_last memory format (model and inputs);
- torch.compile on (equal weighting: a compiled graph hides the `shared` tensor from feature-level surgery);
- pinned host memory, batches copied with non_blocking=True (CUDA only).

Correctness (SGD with momentum, so rounding differences stay rounding-sized; Adam's first steps would turn a
near-zero gradient's sign flip into a full learning-rate step): the logits of a fixed evaluation batch after training, max |difference| divided by max |reference
logit|, must stay below the stated tolerance (fp32 and layout variants 2e-3: CUDA convolutions may use TF32;
bf16 5e-2; fp16 2e-2). Speed: images per second over the timed steps (after the checked ones, which warm up).
Results go to `<out>/gpu_check.json` (atomic). `--dry-run` does everything on the CPU at tiny sizes, skipping
what needs CUDA (fp16 with a scaler, pinned memory) with a printed reason and running torch.compile with the
"eager" backend (tracing only, no C++ build): the test suite runs it so this script never rots. The full run
takes about two minutes on one GPU (torch.compile's first compilation included).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from companion.balancers import GradAggregation  # noqa: E402
from companion.batches import TensorBatches  # noqa: E402
from companion.device import pick_device  # noqa: E402
from companion.files import atomic_write  # noqa: E402
from companion.mtl import HardSharing, conv_tower, head  # noqa: E402
from companion.train import fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = {"fp32": 2e-3, "bf16": 5e-2, "fp16": 2e-2}


def make_model(widths: list[int], chans: int) -> HardSharing:
    trunk = nn.Sequential(*conv_tower(chans, widths), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return HardSharing(
        trunk,
        {"digit": head("classification", widths[-1], 10), "parity": head("classification", widths[-1], 2)},
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny sizes (what the tests run)")
    parser.add_argument(
        "--out", default=str(RESULTS), help="folder for gpu_check.json (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    dry = args.dry_run
    dev = torch.device("cpu") if dry else pick_device("auto")
    cuda = dev.type == "cuda"
    n, size, chans, widths, batch, check_steps, timed_steps = (
        (64, 12, 3, [4, 8], 16, 2, 2) if dry else (8192, 64, 3, [32, 64, 128], 256, 5, 30)
    )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, chans, size, size, generator=g)
    y = {"digit": torch.randint(0, 10, (n,), generator=g)}
    y["parity"] = y["digit"] % 2
    x_eval = torch.randn(64, chans, size, size, generator=g)
    torch.manual_seed(0)
    init = make_model(widths, chans).state_dict()

    def run(
        device: torch.device,
        precision: str = "fp32",
        *,
        balancer=None,
        channels_last: bool = False,
        compile_mode: str | None = None,
        pinned: bool = False,
        steps: int = check_steps,
    ) -> tuple[torch.Tensor, float]:
        model = make_model(widths, chans)
        model.load_state_dict(init)
        xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if pinned:
            batches = TensorBatches(xs.pin_memory(), {k: v.pin_memory() for k, v in y.items()}, batch, seed=0)
        else:
            batches = TensorBatches(xs, y, batch, seed=0, device=device)  # device-resident data
        trained = model
        if compile_mode is not None:
            trained = torch.compile(model, backend=compile_mode)
        start = time.perf_counter()
        fit(
            trained,
            batches,
            epochs=1,
            max_steps=steps,
            optimizer="sgd",
            lr=0.05,
            seed=0,
            device=device,
            precision=precision,
            balancer=balancer,
            progress=False,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            logits = model.to("cpu").float()(x_eval.contiguous())
        return torch.cat([logits["digit"], logits["parity"]], dim=1), steps * batch / seconds

    print(
        f"gpu_check: device {dev} ({'dry run on the CPU, tiny sizes' if dry else 'full'}), torch {torch.__version__}"
    )
    ref_equal, _ = run(torch.device("cpu"))
    ref_upgrad, _ = run(torch.device("cpu"), balancer=GradAggregation("upgrad"))
    amp = "fp16" if cuda else "bf16"
    variants = {
        "fp32_device_resident": {},
        "bf16_autocast": {"precision": "bf16"},
        "fp16_autocast_gradscaler": {"precision": "fp16"},
        f"upgrad_aggregation_{amp}": {"precision": amp, "balancer": "upgrad"},
        "channels_last": {"channels_last": True},
        "compile_off": {},
        "compile_on": {"compile_mode": "eager" if dry else "inductor"},
        "pinned_memory": {"pinned": True},
    }
    skip = {}
    if not cuda:
        skip["fp16_autocast_gradscaler"] = (
            "fp16 autocast with a GradScaler needs CUDA (bf16 is the CPU precision)"
        )
        skip["pinned_memory"] = "pinned host memory only matters for copies to a CUDA device"
    if cuda and not torch.cuda.is_bf16_supported():
        skip["bf16_autocast"] = "this GPU has no bf16 support"
    report: dict = {
        "meta": {
            "device": str(dev),
            "dry_run": dry,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if cuda else "none",
            "batch": batch,
            "image": [chans, size, size],
            "checked_steps": check_steps,
            "timed_steps": timed_steps,
            "tolerances": TOLERANCE,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "variants": {},
    }
    failed = []
    for name, opts in variants.items():
        if name in skip:
            print(f"  {name:28s} skipped: {skip[name]}")
            report["variants"][name] = {"skipped": skip[name]}
            continue
        opts = dict(opts)
        precision = opts.get("precision", "fp32")
        ref = ref_upgrad if opts.get("balancer") else ref_equal
        if opts.get("balancer"):
            opts["balancer"] = GradAggregation("upgrad")
        try:
            logits, _ = run(dev, **opts)
            if opts.get("balancer"):
                opts["balancer"] = GradAggregation("upgrad")
            _, speed = run(dev, **opts, steps=timed_steps)
        except Exception as err:  # report and go on: one broken variant must not hide the others
            failed.append(name)
            report["variants"][name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            print(f"  {name:28s} ERROR {report['variants'][name]['error']}")
            continue
        error = float((logits - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        ok = error <= TOLERANCE[precision]
        if not ok:
            failed.append(name)
        report["variants"][name] = {
            "relative_error": error,
            "tolerance": TOLERANCE[precision],
            "ok": ok,
            "images_per_s": speed,
            "precision": precision,
        }
        print(
            f"  {name:28s} rel. error {error:.1e} (tol {TOLERANCE[precision]:.0e}) {'ok ' if ok else 'FAIL'}"
            f"  {speed:10.0f} images/s"
        )
    report["failed"] = failed
    path = Path(args.out) / ("gpu_check_dry_run.json" if dry else "gpu_check.json")
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=1).encode()))
    print(f"wrote {path}")
    if failed:
        raise SystemExit(f"gpu_check: variants outside tolerance or failing: {failed}")
    return report


if __name__ == "__main__":
    main()
