"""Two requests at once vs one, below the app: what the per-request thread cap allows on this machine.

Each request is a `run_model` pass with the app's defaults (one torch thread per request on 2 cores, see
ui/engine.py), on its own copy of the model, over its own images; "both" starts two requests in two threads at once,
as two browser sessions do. Prints, per model, one request's time, the slower of two concurrent requests, and the
ratio (target < 1.5). Two models: the embedded Fashion-MNIST SE-ResNet (28 x 28 PNGs: per-image Python work under
the GIL dominates) and MobileNetV3-Small on real ImageNet JPEGs (the network dominates). The app-level benchmark
with a real server is benchmarks/concurrent_sessions.py.

    python benchmarks/concurrent_requests.py [--images 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from senet_viz.data.folders import folder_source
from senet_viz.data.sources import ImageSet
from senet_viz.inference.run import RunOptions, run_model
from senet_viz.models import zoo
from senet_viz.models.loaded import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def workloads(n: int) -> list[tuple[str, LoadedModel, ImageSet, ImageSet]]:
    out = []
    fm = zoo.load_model("se_resnet_fmnist", device="cpu")
    fm_images = folder_source(ROOT / "assets" / "fmnist_samples", fm.class_names)
    items = (fm_images.items * (2 * n // len(fm_images.items) + 1))[: 2 * n]
    out.append(("se_resnet_fmnist (28x28 PNG)", fm, replace(fm_images, items=items[:n]),
                replace(fm_images, items=items[n:])))
    tflite = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
    if tflite.is_file():
        mn = zoo.load_model("tf_mobilenetv3_small_100", weights=str(tflite), device="cpu")
        imgs = folder_source(SHARED / "data" / "imagenet-samples", mn.class_names, mn.wnids)
        out.append(("tf_mobilenetv3_small_100 (ImageNet JPEG)", mn, replace(imgs, items=imgs.items[:n]),
                    replace(imgs, items=imgs.items[n: 2 * n])))
    return out


def timed(request, model: LoadedModel, images: ImageSet, start: float, ends: list[float]) -> None:
    request(model, images)
    ends.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images per request (default 300)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the app's cap on 2 cores: SENET_VIZ_TORCH_THREADS = cores // 2

    for name, loaded, first, second in workloads(args.images):
        twin = replace(loaded, model=copy.deepcopy(loaded.model), lock=None)  # as the app copies a busy model

        def request(model: LoadedModel, images: ImageSet) -> None:
            torch.set_num_threads(1)
            run_model(model, images, options=RunOptions(batch_size=32, keep_logits=False))

        request(loaded, first)  # warm-up
        singles, boths = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            request(loaded, first)
            singles.append(time.perf_counter() - t)
            ends: list[float] = []
            start = time.perf_counter()
            threads = [threading.Thread(target=timed, args=(request, m, i, start, ends))
                       for m, i in ((loaded, first), (twin, second))]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            boths.append(max(ends))
        single, both = statistics.median(singles), statistics.median(boths)
        print(f"{name}: {args.images} images per request, 1 torch thread each: one request {single:.2f} s, two at "
              f"once {both:.2f} s, ratio {both / single:.2f} (target < 1.5)")


if __name__ == "__main__":
    main()
