"""PyTorch baseline for the LeNet timing comparison: the lesson's script, timed phase by phase on this machine.

    python scripts/torch_lenet_baseline.py --mode lesson --data ../shared/data/cats_dogs --json out/torch_lesson.json
    python scripts/torch_lenet_baseline.py --mode predecoded --json out/torch_predecoded.json

Three configs (plain, init, bn) x 10 epochs, batch 16, SGD(lr=0.01, momentum=0.9), StepLR(10, 0.1), seed 1,
random 4-pixel-padded crops when training, ImageNet normalization: the lesson's training recipe.

Two data pipelines, so that a comparison can say where the time goes:

* ``--mode lesson`` (needs a folder of JPEGs): the lesson's ``DataLoader`` (``num_workers=0``) decodes, resizes
  and augments every photo at full size **every epoch**;
* ``--mode predecoded``: the photos are decoded once into a ``(N, 3, 32, 32)`` tensor (from the folder, or from
  the embedded ``data/cats_dogs_32.npz`` that ``experiments.lenet`` uses by default) and each batch is cropped
  from it, as ``experiments.lenet`` does.

The wall time is split as ``experiments.lenet`` splits its own (``timing.json``): ``data`` (loading, decoding,
batching and cropping), ``compile`` (always 0: eager PyTorch compiles nothing), ``train`` (forward, backward
and optimizer step), ``eval`` (validation forward passes) and ``other``; ``train_images_per_s`` is training
throughput on the train phase alone, per epoch and overall. Needs only torch, numpy and Pillow.
PyTorch is a test oracle for jaxnorm, never a dependency; this script is a measuring stick only.
"""

import argparse
import json
import os
import random
import time
from pathlib import Path

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
EMBEDDED = Path(__file__).resolve().parents[1] / "data" / "cats_dogs_32.npz"
CONFIGS = ("plain", "init", "bn")


# ------------------------------------------------------------------------------------------------ data
def folder_items(root):
    """ImageFolder layout: ``[(path, class index)]`` with classes sorted by name."""
    classes = sorted(os.listdir(root))
    return [(os.path.join(root, c, f), i) for i, c in enumerate(classes) for f in sorted(os.listdir(os.path.join(root, c)))]


def decode(path):
    """The lesson's ``Resize((32, 32))`` on the full-size photo, as float32 HWC in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255.0


def normalize(hwc):
    return torch.from_numpy(((hwc - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def crop_batch(x, generator):
    """RandomCrop(32, padding=4) per image; the zero padding of a PIL image is ``-mean/std`` once normalized."""
    pad = torch.from_numpy(-MEAN / STD).view(1, 3, 1, 1)
    padded = pad.expand(x.shape[0], 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    ij = torch.randint(0, 9, (x.shape[0], 2), generator=generator).tolist()
    return torch.stack([padded[k, :, i:i + 32, j:j + 32] for k, (i, j) in enumerate(ij)])


def lesson_batches(items, train, batch_size, generator):
    """The lesson's DataLoader path: decode every photo of every batch, every epoch."""
    order = torch.randperm(len(items), generator=generator).tolist() if train else range(len(items))
    order = list(order)
    for s in range(0, len(order), batch_size):
        chosen = [items[k] for k in order[s:s + batch_size]]
        x = normalize(np.stack([decode(p) for p, _ in chosen]))
        yield (crop_batch(x, generator) if train else x), torch.tensor([y for _, y in chosen])


def predecoded_batches(tensors, train, batch_size, generator):
    x_all, y_all = tensors
    order = torch.randperm(len(y_all), generator=generator) if train else torch.arange(len(y_all))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        x = x_all[idx]
        yield (crop_batch(x, generator) if train else x), y_all[idx]


def load_predecoded(data):
    """``{"train": (x, y), "valid": (x, y)}`` decoded once, from the embedded ``.npz`` or a folder."""
    if data is None or str(data).endswith(".npz"):
        with np.load(data or EMBEDDED) as f:
            return {s: (normalize(f[f"{s}_x"].astype(np.float32) / 255.0), torch.from_numpy(f[f"{s}_y"].astype(np.int64)))
                    for s in ("train", "valid")}
    out = {}
    for s in ("train", "valid"):
        items = folder_items(os.path.join(data, s))
        out[s] = (normalize(np.stack([decode(p) for p, _ in items])), torch.tensor([y for _, y in items]))
    return out


# ------------------------------------------------------------------------------------------------ model
class LeNet(nn.Module):
    """The lesson's LeNet; with ``bn``, its LeNet_bn (BN after conv1, conv2 and fc1)."""

    def __init__(self, bn):
        super().__init__()
        self.bn = bn
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 2)
        if bn:
            self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(6), nn.BatchNorm2d(16), nn.BatchNorm1d(120)

    def _norm(self, name, v):
        return getattr(self, name)(v) if self.bn else v

    def forward(self, x):
        x = F.max_pool2d(F.relu(self._norm("bn1", self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self._norm("bn2", self.conv2(x))), 2)
        x = F.relu(self._norm("bn3", self.fc1(x.view(x.size(0), -1))))
        return self.fc3(F.relu(self.fc2(x)))

    def initialize_weights(self):
        """The lesson's "init" config: xavier_normal_ convolutions, N(0, 1) linear layers (it diverges)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight.data)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight.data, 0, 1)
                m.bias.data.zero_()


# ------------------------------------------------------------------------------------------------ training
def timed(batches, seconds):
    """Yield from ``batches``, adding the time spent producing each batch to ``seconds["data"]``."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            seconds["data"] += time.perf_counter() - t
        yield item


def run(cfg, make_batches, seconds, epochs):
    """Train one config; returns its per-epoch records (loss, accuracies, train images/s)."""
    torch.manual_seed(1)
    random.seed(1)
    generator = torch.Generator().manual_seed(1)
    net = LeNet(cfg == "bn")
    if cfg == "init":
        net.initialize_weights()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10, 0.1)
    history = []
    for epoch in range(epochs):
        net.train()
        losses, correct, seen, train_s = [], 0, 0, 0.0
        for x, y in timed(make_batches("train", generator), seconds):
            t = time.perf_counter()
            out = net(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            train_s += time.perf_counter() - t
        seconds["train"] += train_s
        sched.step()
        net.eval()
        v_correct = v_seen = 0
        with torch.no_grad():
            for x, y in timed(make_batches("valid", generator), seconds):
                t = time.perf_counter()
                v_correct += (net(x).argmax(1) == y).sum().item()
                v_seen += len(y)
                seconds["eval"] += time.perf_counter() - t
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "train_acc": correct / seen,
                        "valid_acc": v_correct / v_seen, "train_images": seen,
                        "train_images_per_s": round(seen / train_s, 1)})
    return history


def batch_source(mode, data, batch_size, seconds):
    """``make_batches(split, generator)`` for the chosen pipeline; decoding once counts as data time."""
    if mode == "lesson":
        if data is None or not os.path.isdir(data):
            raise SystemExit("--mode lesson decodes JPEGs every epoch: give --data DIR (DIR/train/<class>/*, DIR/valid/...)")
        items = {s: folder_items(os.path.join(data, s)) for s in ("train", "valid")}
        return lambda split, g: lesson_batches(items[split], split == "train", batch_size, g)
    t = time.perf_counter()
    tensors = load_predecoded(data)
    seconds["data"] += time.perf_counter() - t
    return lambda split, g: predecoded_batches(tensors[split], split == "train", batch_size, g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("lesson", "predecoded"), default="predecoded",
                   help="lesson: decode every JPEG every epoch; predecoded: decode once (default)")
    p.add_argument("--data", default=None, help="folder of photos, or a .npz (default: the embedded photos)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, default=None, help="write the timing split and metrics here")
    args = p.parse_args(argv)
    seconds = {"data": 0.0, "compile": 0.0, "train": 0.0, "eval": 0.0}
    make_batches = batch_source(args.mode, args.data, args.batch_size, seconds)
    results = {}
    for cfg in CONFIGS:
        t = time.perf_counter()
        results[cfg] = run(cfg, make_batches, seconds, args.epochs)
        last = results[cfg][-1]
        print(f"{cfg} train_loss {last['train_loss']:.4f} train_acc {last['train_acc']:.3f} "
              f"valid_acc {last['valid_acc']:.3f}  {time.perf_counter() - t:.1f} s", flush=True)
    report(args, seconds, results, time.perf_counter() - T0)


def report(args, seconds, results, wall):
    """Print the split and write it, with every epoch's metrics, to ``--json``."""
    images = sum(r["train_images"] for h in results.values() for r in h)
    timing = {"mode": args.mode, "data_source": str(args.data or EMBEDDED.relative_to(EMBEDDED.parents[1])), "wall": round(wall, 3),
              **{k: round(v, 3) for k, v in seconds.items()}, "other": round(wall - sum(seconds.values()), 3),
              "train_images": images, "train_images_per_s": round(images / seconds["train"], 1),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "metrics": results}
    print(f"total {wall:.1f} s (imports included): data {seconds['data']:.1f}, compile 0 (eager), train "
          f"{seconds['train']:.1f}, eval {seconds['eval']:.1f} s; {timing['train_images_per_s']:.0f} training images/s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(timing, indent=1))


if __name__ == "__main__":
    main()
