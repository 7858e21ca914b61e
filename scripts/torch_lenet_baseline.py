"""PyTorch baseline for the LeNet speed goal (issue 4): the lesson's script shape, timed on the same machine.

    python scripts/torch_lenet_baseline.py ../shared/data/cats_dogs

Three configs (plain, init, bn) × 10 epochs, batch 16, SGD(lr=0.01, momentum=0.9), StepLR(10, 0.1), seed 1: as
the lesson's PyTorch script, it decodes and augments every image every epoch in a ``DataLoader`` (num_workers=0).
Needs only torch, numpy and Pillow (no torchvision). Compare its total with
``python -m experiments.lenet --data DIR --config all --epochs 10`` (decoding and compilation included in both).
PyTorch is a test oracle for jaxnorm, never a dependency; this script is a measuring stick only.
"""

import os
import random
import sys
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class Folder(Dataset):
    """DIR/<class>/<image>: 32×32 RGB, random 4-pixel-padded crop when training, ImageNet normalization."""

    def __init__(self, root, train):
        self.items = [(os.path.join(root, c, f), i) for i, c in enumerate(sorted(os.listdir(root)))
                      for f in sorted(os.listdir(os.path.join(root, c)))]
        self.train = train

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        path, label = self.items[k]
        a = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255.0
        if self.train:
            a = np.pad(a, ((4, 4), (4, 4), (0, 0)))
            i, j = random.randint(0, 8), random.randint(0, 8)
            a = a[i:i + 32, j:j + 32]
        a = (a - MEAN) / STD
        return torch.from_numpy(a.transpose(2, 0, 1).copy()), label


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


def run(root, cfg, epochs=10):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    train = DataLoader(Folder(os.path.join(root, "train"), True), batch_size=16, shuffle=True)
    valid = DataLoader(Folder(os.path.join(root, "valid"), False), batch_size=16)
    net = LeNet(cfg == "bn")
    if cfg == "init":
        net.initialize_weights()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10, 0.1)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        losses, correct, seen = [], 0, 0
        for x, y in train:
            out = net(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
        sched.step()
        net.eval()
        v_correct = v_seen = 0
        with torch.no_grad():
            for x, y in valid:
                v_correct += (net(x).argmax(1) == y).sum().item()
                v_seen += len(y)
    return float(np.mean(losses)), correct / seen, v_correct / v_seen


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/torch_lenet_baseline.py DATA_DIR  (DATA_DIR/train/<class>/*, DATA_DIR/valid/...)")
    for cfg in ("plain", "init", "bn"):
        t = time.perf_counter()
        loss, acc, v_acc = run(sys.argv[1], cfg)
        print(f"{cfg} train_loss {loss:.4f} train_acc {acc:.3f} valid_acc {v_acc:.3f}  {time.perf_counter() - t:.1f} s",
              flush=True)
    print(f"total {time.perf_counter() - T0:.1f} s (imports included)")


if __name__ == "__main__":
    main()
