"""Per-image costs on one core, as mean ± std over rounds: the JPEG decoders, the crop resize, the augmentation
presets.

On bench/data.py's generated 300-500 px photo-like JPEGs (made once, into ~/.cache/dogcat/bench/), milliseconds
per image, file read included, of: PIL (``Image.open(...).convert("RGB")`` to an array, the template's way),
``torchvision.io.decode_jpeg``, simplejpeg (what dogcat decodes with) and OpenCV's ``imdecode``; then the
training crop's resize to 224 x 224 from a random region of a 256 x 256 cache square: OpenCV's bilinear
(dogcat's with the ``[fast]`` extra) against torch's antialiased bilinear (without it); then each ``--augment``
preset (``data/augment.py``'s BatchPolicy, image by image as training runs it) on 28 x 28 x 1 uint8 images, as
Fashion-MNIST's batches get it. Rounds alternate the ways, so that a neighbour's burst hits each alike.
Everything runs on one thread.

    .venv/bin/python bench/per_image.py [--images=300] [--rounds=5] [--pool=2000]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

from _figures import mean_std, ratio_summary
from data import make_data
from dogcat.data.augment import BatchPolicy

PRESETS = ("randaugment", "trivialaugment", "autoaugment")


def decoders() -> dict:
    import torchvision.io

    ways = {"PIL": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
            "torchvision.io.decode_jpeg": lambda b: torchvision.io.decode_jpeg(torch.frombuffer(bytearray(b),
                                                                                                dtype=torch.uint8))}
    try:
        import simplejpeg

        ways["simplejpeg"] = lambda b: simplejpeg.decode_jpeg(b, "RGB")
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)
        ways["OpenCV imdecode"] = lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    except ImportError:
        pass
    return ways


def resizers() -> dict:
    def torch_aa(crop: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
        return torch.nn.functional.interpolate(t, size=(224, 224), mode="bilinear", antialias=True)[0].numpy()

    ways = {"torch bilinear, antialiased": torch_aa}
    try:
        import cv2

        ways["OpenCV bilinear"] = lambda crop: cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR)
    except ImportError:
        pass
    return ways


def per_image_ms(fn, items: list) -> float:
    t0 = time.perf_counter()
    for x in items:
        fn(x)
    return (time.perf_counter() - t0) / len(items) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pool", type=int, default=2000, help="the generated set to take them from (bench/data.py's)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(make_data(max(args.pool, args.images)).glob("*.jpg"))[: args.images]
    rng = np.random.default_rng(0)
    squares = rng.integers(0, 255, (32, 256, 256, 3), dtype=np.uint8)
    crops = []
    for i in range(len(files)):  # random resized crops of 35-100 % of the square, as training cuts them
        side = int(256 * rng.uniform(0.35, 1.0) ** 0.5)
        top, left = rng.integers(0, 256 - side + 1, 2)
        crops.append(squares[i % 32, top:top + side, left:left + side])
    dec, res = decoders(), resizers()
    small = torch.randint(0, 256, (256, 1, 28, 28), dtype=torch.uint8)
    policies = {f"--augment={name}": BatchPolicy(name, 0.0, (0.286,)) for name in PRESETS}
    times: dict[str, list[float]] = {k: [] for k in (*dec, *res, *policies)}
    for _ in range(args.rounds + 1):  # the first round warms the page cache and the libraries: not counted
        for name, fn in dec.items():
            times[name].append(per_image_ms(lambda p: fn(p.read_bytes()), files))
        for name, fn in res.items():
            times[name].append(per_image_ms(fn, crops))
        for name, policy in policies.items():
            t0 = time.perf_counter()
            policy(small, seed=0)
            times[name].append((time.perf_counter() - t0) / len(small) * 1e3)
    print(f"{len(files)} JPEGs of 300-500 px, {len(crops)} crops, {len(small)} 28x28 images, one thread, {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    for name, ts in times.items():
        print(f"{name:<30} {mean_std(ts[1:], '{:.3f}')} ms an image")
    if "simplejpeg" in times:
        print(f"PIL / simplejpeg: {ratio_summary([a / b for a, b in zip(times['PIL'][1:], times['simplejpeg'][1:])], 'rounds')}")
    if "OpenCV bilinear" in times:
        r = [a / b for a, b in zip(times["torch bilinear, antialiased"][1:], times["OpenCV bilinear"][1:])]
        print(f"torch / OpenCV resize: {ratio_summary(r, 'rounds')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
