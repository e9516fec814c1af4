"""Compare the TFLite importer with the TFLite runtime on the shared ImageNet samples.

Runs the quantized MobileNetV3-Small with the TFLite runtime (ai-edge-litert, the oracle) and the converted
timm ``tf_mobilenetv3_small_100`` on every image in ../shared/data/imagenet-samples and prints

* the runtime's top-1/top-5 on its own preprocessing (resize 256 bilinear, center crop 224, uint8 input),
* the converted model's top-1/top-5 on timm's default preprocessing for the model,
* top-1 agreement between the two (each on its own preprocessing, and on the same pixels),
* per SE block, on the same pixels: mean absolute difference of the gates and the mean gate of each side.

Usage (from the repository root):  .venv/bin/python benchmarks/tflite_oracle.py [--limit N] [--threads T]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tflite
import timm
import torch
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from senet_viz.models.tflite import load_tflite_state_dict, runtime_crop

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL_FILE = SHARED / "models" / "mobilenet_v3_small_224_1.0_uint8.tflite"
IMAGES = SHARED / "data" / "imagenet-samples"
GATE_SUFFIX = "squeeze_excite/Conv_1/mul"  # output of the hard-sigmoid: relu6(x + 3) * (1/6)
BATCH = 100


def gate_tensor_names(path: Path) -> list[str]:
    """Names of the runtime's SE gate tensors, in execution order."""
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    names = []
    for i in range(graph.OperatorsLength()):
        name = graph.Tensors(int(graph.Operators(i).Outputs(0))).Name().decode()
        if name.endswith(GATE_SUFFIX):
            names.append(name)
    return names


def topk_hits(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return float(np.mean(order[:, 0] == labels)), float(np.mean((order[:, :5] == labels[:, None]).any(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and the runtime")
    args = parser.parse_args()
    if not MODEL_FILE.exists() or not IMAGES.is_dir():
        sys.exit(f"missing {MODEL_FILE} or {IMAGES}: this benchmark needs ../shared next to the repository")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    files = sorted(IMAGES.glob("*.JPEG"))
    if args.limit:
        files = files[: args.limit]
    info = timm.data.ImageNetInfo()
    wnid_to_index = {info.index_to_label_name(i): i for i in range(1000)}
    labels = np.array([wnid_to_index[f.name.split("_", 1)[0]] for f in files])

    model = timm.create_model("tf_mobilenetv3_small_100", num_classes=1000)
    model.load_state_dict(load_tflite_state_dict(MODEL_FILE, model), strict=True)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    gate_modules = [(n, m) for n, m in model.named_modules() if n.endswith(".se.gate")]

    interp = Interpreter(model_path=str(MODEL_FILE), num_threads=args.threads,
                         experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    details = {d["name"]: d for d in interp.get_tensor_details()}
    gate_details = [details[n] for n in gate_tensor_names(MODEL_FILE)]
    if len(gate_details) != len(gate_modules):
        sys.exit(f"{len(gate_details)} SE gates in the file, {len(gate_modules)} in the torch model")
    input_index = interp.get_input_details()[0]["index"]
    output_index = interp.get_output_details()[0]["index"]

    rt_scores, pt_scores, pt_same_scores = [], [], []
    rt_gates: list[list[np.ndarray]] = [[] for _ in gate_details]
    pt_gates: list[list[np.ndarray]] = [[] for _ in gate_modules]
    captured: list[torch.Tensor | None] = [None] * len(gate_modules)

    def hook_for(i):
        def hook(_module, _inputs, output):
            captured[i] = output.detach().flatten(1)
        return hook

    for b in range(0, len(files), BATCH):
        batch = files[b: b + BATCH]
        crops = [runtime_crop(f) for f in batch]
        for crop in crops:
            interp.set_tensor(input_index, crop[None])
            interp.invoke()
            rt_scores.append(interp.get_tensor(output_index)[0].astype(np.float32))
            for i, d in enumerate(gate_details):
                scale, zero_point = d["quantization"]
                q = interp.get_tensor(d["index"]).reshape(-1).astype(np.float32)
                rt_gates[i].append(scale * (q - zero_point))
        timm_x = torch.stack([transform(Image.open(f).convert("RGB")) for f in batch])
        # Same pixels as the runtime, normalized as the float model expects (mean = std = 0.5).
        same_x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
        with torch.no_grad():
            pt_scores.append(model(timm_x).numpy())
            handles = [m.register_forward_hook(hook_for(i)) for i, (_, m) in enumerate(gate_modules)]
            try:
                pt_same_scores.append(model(same_x).numpy())
            finally:
                for h in handles:
                    h.remove()
        for i, g in enumerate(captured):
            pt_gates[i].append(g.numpy())
        print(f"  {min(b + BATCH, len(files))}/{len(files)} images", file=sys.stderr, flush=True)

    rt = np.stack(rt_scores)[:, 1:]  # drop the background logit
    pt, pt_same = np.concatenate(pt_scores), np.concatenate(pt_same_scores)
    rt_top1, rt_top5 = topk_hits(rt, labels)
    pt_top1, pt_top5 = topk_hits(pt, labels)
    same_top1, same_top5 = topk_hits(pt_same, labels)
    rt_pred = np.argsort(-rt, axis=1, kind="stable")[:, 0]
    print(f"images: {len(files)}  (model file {MODEL_FILE.name})")
    print(f"TFLite runtime (uint8, resize 256 + crop 224)      top-1 {rt_top1:6.1%}  top-5 {rt_top5:6.1%}")
    print(f"converted torch (timm preprocessing)               top-1 {pt_top1:6.1%}  top-5 {pt_top5:6.1%}")
    print(f"converted torch (runtime's pixels)                 top-1 {same_top1:6.1%}  "
          f"top-5 {same_top5:6.1%}")
    print(f"top-1 agreement, each on its own preprocessing     {np.mean(pt.argmax(1) == rt_pred):6.1%}")
    print(f"top-1 agreement, same pixels                       {np.mean(pt_same.argmax(1) == rt_pred):6.1%}")
    print()
    print(f"{'SE block':<16} {'channels':>8} {'gate MAD':>9} {'max AD':>7} "
          f"{'mean gate torch':>16} {'runtime':>8}")
    for (name, _), rt_g, pt_g in zip(gate_modules, rt_gates, pt_gates, strict=True):
        a, b = np.concatenate(pt_g), np.stack(rt_g)
        block = name.removesuffix(".se.gate")
        print(f"{block:<16} {a.shape[1]:>8} {np.abs(a - b).mean():>9.4f} {np.abs(a - b).max():>7.3f} "
              f"{a.mean():>16.3f} {b.mean():>8.3f}")
    print(f"\nwall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
