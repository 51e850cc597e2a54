"""Vision study: the paper's columns (NoAdapt, Tent, SAR, EATA, COME, DeYO, ZeroSiam, ZeroSiam+EATA,
ZeroSiam+DeYO) on corrupted digits streams in its four wild scenarios, over three stream seeds.

    OMP_NUM_THREADS=1 .venv/bin/python studies/vision_collapse.py --bs1-limit 200   # the docs/vision.md study
    .venv/bin/python studies/vision_collapse.py --quick    # seconds; a smoke run (the test suite's)
    .venv/bin/python studies/vision_collapse.py --sweep    # the learning-rate sweep behind the defaults

No network: the data is scikit-learn's bundled digits (1797 8x8 images, upsampled to 32x32,
one channel), split 1000 train / 797 test. Two small classifiers are trained on the clean
train split (weights cached under runs/vision_bench/weights/):

- `gn_cnn`: a five-layer conv net with GroupNorm and a torchvision-style `fc` head;
- `ln_vit`: a four-block ViT with LayerNorm (patch 4, width 64) exposing timm's
  `forward_features` / `forward_head` / `get_classifier`.

Each is adapted on corrupted test streams (severity 5 of 12 corruptions: noise, blur,
contrast, brightness, pixelate, fog, occlusion) in the paper's four wild scenarios:

- `mixed`: all corruptions shuffled into one stream (about 9,500 images, batch 64);
- `label_shift`: per corruption, the test set twice (two corruption draws) sorted by label,
  batch 64 (online imbalanced label shift at its extreme, pure class order);
- `bs1`: per corruption, the test set shuffled, batch size 1;
- `blind_spot`: per corruption, adapt at batch size 1 on only the images the source model
  gets wrong, then score the adapted (frozen) model on the whole corrupted test set.

Per-corruption scenarios run gaussian_noise, shot_noise, defocus_blur and contrast, each
from the source weights, and report the mean. The table gives accuracy (%) of predictions
made before each update (predict, then update); for `blind_spot`, the accuracy after it.

Learning rates (SGD, momentum 0.9): one base rate per model for every method's
normalization parameters, with ZeroSiam's predictor at the same rate (the paper's default),
scaled by batch/64 as in the paper's code (so batch size 1 runs at base/64). The base rates
are the ones that maximize *Tent's* accuracy in a mild, i.i.d. setting on a held-out
corruption (speckle_noise, batch 64): `--sweep` reproduces that choice. SAR and EATA use
their papers' margins (0.4 ln K), SAR rho 0.05 and model recovery at 0.2 nats; EATA runs
without its Fisher regularizer and redundancy filter. COME is COME's own code (opinion entropy, C = K);
`come+deyo` is what the ZeroSiam repository runs as its COME baseline. DeYO keeps its official
defaults (entropy filter 0.5 ln K, PLPD > 0.2, E0 0.4 ln K, a 4x4 patch shuffle); neither SAR nor
DeYO gets the doubled rate the official scripts give them at batch size 1. The plug-ins use
ZeroSiam's loss under EATA's or DeYO's selection and weights.

Seeds: the models are trained once (`--seed`); each of `--seeds` draws its own corruptions, stream
orders and DeYO shuffles. Every method of a seed sees the same samples in the same order, so the
tables give paired changes from NoAdapt with the language tables' intervals (eval.stats), and the
wall time per sample of each method (the paper's overhead comparison).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from zs_llm.registry import Registry  # noqa: E402
from zs_llm.vision import VISION_METHODS, Adapter, VisionAdaptConfig, wrap_classifier  # noqa: E402

SIZE = 32
NUM_CLASSES = 10
# the paper's vision table: its baselines, ZeroSiam, and ZeroSiam as a plug-in to EATA and DeYO
METHODS = ("noadapt", "tent", "sar", "eata", "come", "deyo", "zerosiam", "zerosiam+eata", "zerosiam+deyo")
SCENARIOS = ("mixed", "label_shift", "bs1", "blind_spot")
HELD_OUT = "speckle_noise"  # used only to choose the learning rates
# base learning rates at batch 64, chosen by `--sweep` (Tent's best on the held-out corruption)
DEFAULT_LR = {"gn_cnn": 3e-2, "ln_vit": 3e-2}

# ---------------------------------------------------------------------------------------
# data


def load_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits upsampled to 32x32 in [0, 1]: (x_train (1000, 1, 32, 32), y_train, x_test (797, ...), y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target)
    tr, te = train_test_split(np.arange(len(y)), train_size=1000, stratify=d.target, random_state=seed)
    return x[tr], y[tr], x[te], y[te]


# ---------------------------------------------------------------------------------------
# corruptions: (x (N, 1, H, W) in [0, 1], severity 1..5, generator) -> same shape in [0, 1]

CORRUPTIONS: Registry = Registry("corruption")


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel / kernel.sum()
    pad = k.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), k[None, None])


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g[:, None] * g[None, :]


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(x, s, g):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][s - 1]
    return (x + c * torch.randn(x.shape, generator=g)).clamp(0, 1)


@CORRUPTIONS.register("shot_noise")
def shot_noise(x, s, g):
    c = [60, 25, 12, 5, 3][s - 1]
    return (torch.poisson(x * c, generator=g) / c).clamp(0, 1)


@CORRUPTIONS.register("impulse_noise")
def impulse_noise(x, s, g):
    c = [0.03, 0.06, 0.09, 0.17, 0.27][s - 1]
    u = torch.rand(x.shape, generator=g)
    salt = torch.rand(x.shape, generator=g) < 0.5
    return torch.where(u < c, salt.float(), x)


@CORRUPTIONS.register("speckle_noise")
def speckle_noise(x, s, g):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][s - 1]
    return (x + x * c * torch.randn(x.shape, generator=g)).clamp(0, 1)


@CORRUPTIONS.register("gaussian_blur")
def gaussian_blur(x, s, g):
    return _blur(x, _gaussian_kernel([0.8, 1.2, 1.6, 2.0, 2.6][s - 1])).clamp(0, 1)


@CORRUPTIONS.register("defocus_blur")
def defocus_blur(x, s, g):
    r = [1.5, 2.0, 2.5, 3.0, 4.0][s - 1]
    n = math.ceil(r)
    t = torch.arange(-n, n + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= r**2).float()
    return _blur(x, disk).clamp(0, 1)


@CORRUPTIONS.register("motion_blur")
def motion_blur(x, s, g):
    n = [3, 5, 7, 9, 11][s - 1]
    out = torch.empty_like(x)
    angles = torch.randint(0, 4, (len(x),), generator=g)
    for a in range(4):
        k = torch.zeros(n, n)
        idx = torch.arange(n)
        if a == 0:
            k[n // 2] = 1
        elif a == 1:
            k[:, n // 2] = 1
        elif a == 2:
            k[idx, idx] = 1
        else:
            k[idx, n - 1 - idx] = 1
        sel = angles == a
        if sel.any():
            out[sel] = _blur(x[sel], k)
    return out.clamp(0, 1)


@CORRUPTIONS.register("contrast")
def contrast(x, s, g):
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s - 1]
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * c + m).clamp(0, 1)


@CORRUPTIONS.register("brightness")
def brightness(x, s, g):
    return (x + [0.1, 0.2, 0.3, 0.4, 0.5][s - 1]).clamp(0, 1)


@CORRUPTIONS.register("pixelate")
def pixelate(x, s, g):
    side = round(SIZE * [0.6, 0.5, 0.4, 0.3, 0.25][s - 1])
    small = F.interpolate(x, size=(side, side), mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="nearest")


@CORRUPTIONS.register("fog")
def fog(x, s, g):
    # additive low-frequency haze, then rescaled into [0, 1] (which also lowers contrast)
    c = [0.4, 0.6, 0.8, 1.0, 1.3][s - 1]
    haze = torch.rand(len(x), 1, 4, 4, generator=g)
    haze = F.interpolate(haze, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return ((x + c * haze) / (1 + c)).clamp(0, 1)


@CORRUPTIONS.register("occlusion")
def occlusion(x, s, g):
    side = [6, 9, 12, 14, 16][s - 1]
    out = x.clone()
    pos = torch.randint(0, SIZE - side + 1, (len(x), 2), generator=g)
    for i, (r, c) in enumerate(pos.tolist()):
        out[i, :, r : r + side, c : c + side] = 0.0
    return out


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """One draw of corruption `name` at `severity` (1..5) on images x (N, 1, H, W)."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    g = torch.Generator().manual_seed(seed)
    return CORRUPTIONS[name](x, severity, g)


# ---------------------------------------------------------------------------------------
# models


class GNConvNet(nn.Module):
    """A torchvision-style classifier: a conv trunk with GroupNorm, average pooling, `fc`."""

    def __init__(self, width: int = 32, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, c_in = [], 1
        for c_out, stride in ((width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2), (4 * width, 2)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU()]
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.trunk(2 * x - 1)).flatten(1))  # (B, K)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d/heads)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A small pre-LN ViT with a class token and timm's split: forward_features / forward_head."""

    def __init__(
        self, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4, num_classes: int = NUM_CLASSES
    ):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (SIZE // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x):
        x = self.patch_embed(2 * x - 1).flatten(2).transpose(1, 2)  # (B, T, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.norm(self.blocks(x))  # (B, T + 1, D)

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0]  # (B, D)
        return x if pre_logits else self.head(x)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


MODELS: dict[str, tuple[Callable[[], nn.Module], dict]] = {
    # name: (builder, training recipe)
    "gn_cnn": (GNConvNet, {"epochs": 12, "lr": 3e-3, "weight_decay": 1e-4}),
    "ln_vit": (TinyViT, {"epochs": 30, "lr": 2e-3, "weight_decay": 0.05}),
}


def _shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    # random translation by up to max_shift pixels, per image
    p = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=g).tolist()
    return torch.stack([p[i, :, r : r + SIZE, c : c + SIZE] for i, (r, c) in enumerate(offs)])


def train_model(
    name: str, x: torch.Tensor, y: torch.Tensor, seed: int, max_steps: int | None = None
) -> nn.Module:
    """Train `name` on clean digits with AdamW, cosine schedule and small random shifts."""
    build, recipe = MODELS[name]
    torch.manual_seed(seed)
    model = build()
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x) / 64)
    total = recipe["epochs"] * steps_per_epoch if max_steps is None else max_steps
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe["lr"], total_steps=total, pct_start=0.1)
    model.train()
    step = 0
    while step < total:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            if step == total:
                break
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(_shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return model.eval()


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_or_train(name: str, x, y, seed: int, cache: Path, max_steps: int | None, log) -> nn.Module:
    key = json.dumps([name, MODELS[name][1], seed, max_steps, len(x), float(x.sum())], sort_keys=True)
    path = cache / f"{name}_s{seed}_{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"
    model = MODELS[name][0]()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"[{name}] loaded {path}")
        return model.eval()
    t0 = time.time()
    model = train_model(name, x, y, seed, max_steps)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    log(f"[{name}] trained in {time.time() - t0:.0f}s, cached at {path}")
    return model


# ---------------------------------------------------------------------------------------
# streams and runs


def batches(x: torch.Tensor, y: torch.Tensor, bs: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]


def make_adapter(base: nn.Module, method: str, lr: float, seed: int = 0) -> Adapter:
    model = wrap_classifier(_copy(base))
    cls = VISION_METHODS[method]
    # methods that draw random numbers (DeYO's shuffles) take the stream's seed
    kwargs = {"seed": seed} if any(f.name == "seed" for f in dataclasses.fields(cls)) else {}
    return Adapter(model, cls(**kwargs), VisionAdaptConfig(lr=lr))


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def run_stream(base: nn.Module, method: str, stream, lr: float, seed: int = 0) -> tuple[list[dict], Adapter]:
    """Adapt on `stream`; the adapter's history gains each sample's correctness (`correct`) and the
    stream's seconds per sample (`seconds`, the wall time of predicting and updating)."""
    adapter = make_adapter(base, method, lr, seed)
    correct = []
    t0 = time.perf_counter()
    for xb, yb in stream:
        correct += (adapter(xb, yb).argmax(-1) == yb).tolist()
    seconds = (time.perf_counter() - t0) / max(1, len(correct))
    adapter.correct, adapter.seconds = correct, seconds
    return adapter.history, adapter


def summarize(histories: list[list[dict]]) -> dict:
    """Accuracy over all samples of the streams, and the per-batch curves concatenated."""
    h = [b for hist in histories for b in hist]
    n = np.array([b["n"] for b in h])
    acc = np.array([b["acc"] for b in h])
    return {
        "acc": float((acc * n).sum() / n.sum()),
        "n": n.tolist(),
        "batch_acc": acc.tolist(),
        "logit_norm": [b["logit_norm"] for b in h],
        "logit_norm_centered": [b["logit_norm_centered"] for b in h],
        "entropy": [b["entropy"] for b in h],
        "predictor_dev": [b["predictor_dev"] for b in h],
        "selected": float(np.mean([b.get("selected", 0.0) for b in h])),
        "boundaries": np.cumsum([sum(b["n"] for b in hist) for hist in histories]).tolist(),
    }


def build_streams(scenario: str, x, y, source: nn.Module, args, seed: int | None = None) -> list[dict]:
    """The streams of one scenario: a list of {"batches": [(x, y)], "eval": (x, y) | None}. `seed`
    (default args.seed) draws the corruptions and the orders."""
    seed0 = args.seed if seed is None else seed
    g = torch.Generator().manual_seed(seed0 + 1)
    out = []
    if scenario == "mixed":
        xs, ys = [], []
        for i, c in enumerate(args.mixed_corruptions):
            xs.append(corrupt(x, c, args.severity, seed=seed0 * 1000 + i))
            ys.append(y)
        xs, ys = torch.cat(xs), torch.cat(ys)
        perm = torch.randperm(len(ys), generator=g)
        return [{"batches": batches(xs[perm], ys[perm], args.batch_size), "eval": None}]
    for i, c in enumerate(args.corruptions):
        seed = seed0 * 1000 + 100 + i
        if scenario == "label_shift":
            xs = torch.cat([corrupt(x, c, args.severity, seed=seed + 17 * r) for r in range(args.repeats)])
            ys = y.repeat(args.repeats)
            perm = torch.randperm(len(ys), generator=g)
            order = perm[torch.argsort(ys[perm], stable=True)]  # by label, shuffled within a class
            out.append({"batches": batches(xs[order], ys[order], args.batch_size), "eval": None})
        elif scenario == "bs1":
            xs = corrupt(x, c, args.severity, seed=seed)
            perm = torch.randperm(len(y), generator=g)[: args.bs1_limit]
            out.append({"batches": batches(xs[perm], y[perm], 1), "eval": None})
        elif scenario == "blind_spot":
            xs = corrupt(x, c, args.severity, seed=seed)
            with torch.no_grad():
                wrong = torch.cat([source(xb).argmax(-1) != yb for xb, yb in batches(xs, y, 256)])
            idx = wrong.nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)][: args.bs1_limit]
            out.append({"batches": batches(xs[idx], y[idx], 1), "eval": (xs, y)})
        else:
            raise ValueError(f"unknown scenario {scenario!r}")
    return out


def _cell_path(cells: Path, scenario: str, method: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps({**key, "scenario": scenario, "method": method}, sort_keys=True).encode())
    return cells / f"{scenario}_{key['model']}_{method.replace('+', '-')}_{digest.hexdigest()[:12]}.json"


def _save_cell(path: Path, res: dict) -> None:
    """Write one (scenario, model, method) result atomically; `outcomes` {(seed, stream): [...]}
    becomes a list of [seed, stream, [...]] (JSON has no tuple keys)."""
    from zs_llm.checkpoint import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**res, "outcomes": [[s, i, o] for (s, i), o in res["outcomes"].items()]},
                                       default=float))


def _load_cell(path: Path) -> dict:
    data = json.loads(path.read_text())
    data["outcomes"] = {(s, i): o for s, i, o in data["outcomes"]}
    return data


def run_scenario(
    scenario: str, base: nn.Module, x, y, args, base_lr: float, seeds=None,
    cells: Path | None = None, key: dict | None = None, log=None,
) -> dict[str, dict]:
    """Every method on the scenario's streams, for each seed. Per method: the first seed's curves
    (`summarize`), `acc` pooled over seeds and streams, `outcomes` {(seed, stream): [correct, ...]}
    (the predictions before each update; blind_spot: the adapted model on the whole corrupted test
    set), and `sec_per_sample` (mean over seeds and streams). With `cells` (a folder) and `key`
    (everything the result depends on besides scenario and method, `model` included), each method's
    result is written there when it finishes and read back instead of rerun: a killed study resumes
    at its first unfinished (scenario, model, method)."""
    seeds = [args.seed] if seeds is None else list(seeds)
    streams = None
    results = {}
    for method in args.methods:
        path = _cell_path(cells, scenario, method, {**key, "seeds": seeds}) if cells is not None else None
        if path is not None and path.exists():
            results[method] = _load_cell(path)
            if log is not None:
                log(f"[{scenario}/{key['model']}] {method}: reused {path.name}")
            continue
        if streams is None:
            streams = {s: build_streams(scenario, x, y, base, args, s) for s in seeds}
        outcomes, seconds, curves = {}, [], None
        for seed in seeds:
            hists = []
            for i, s in enumerate(streams[seed]):
                bs = len(s["batches"][0][1])
                hist, adapter = run_stream(base, method, s["batches"], base_lr * bs / 64, seed)
                hists.append(hist)
                seconds.append(adapter.seconds)
                outcomes[seed, i] = adapter.correct
                if s["eval"] is not None:
                    xe, ye = s["eval"]
                    preds = torch.cat([adapter.predict(xb).argmax(-1) for xb, _ in batches(xe, ye, 256)])
                    outcomes[seed, i] = (preds == ye).tolist()
            if curves is None:
                curves = summarize(hists)
        res = curves
        res["stream_acc"] = res["acc"]
        flat = [c for o in outcomes.values() for c in o]
        res["acc"] = float(np.mean(flat))
        res["outcomes"] = outcomes
        res["sec_per_sample"] = float(np.mean(seconds))
        res["n_streams"] = len(streams[seeds[0]])
        res["samples"] = int(sum(res["n"]))
        res["seeds"] = seeds
        results[method] = res
        if path is not None:
            _save_cell(path, res)
    return results


# ---------------------------------------------------------------------------------------
# reporting


def table(results: dict, methods, models) -> str:
    lines = [
        "| scenario | model | samples | " + " | ".join(methods) + " |",
        "|---|---|---:|" + "---:|" * len(methods),
    ]
    for scenario, per_model in results.items():
        for model in models:
            cells = per_model[model]
            row = [f"{100 * cells[m]['acc']:.1f}" for m in methods]
            lines.append(
                f"| {scenario} | {model} | {cells[methods[0]]['samples']} | " + " | ".join(row) + " |"
            )
    return "\n".join(lines)


def paired_change(result: dict, base: dict):
    """A method's change from `base` (NoAdapt) on the same samples: eval.stats' paired difference
    over the (seed, stream) sets (mean difference, stratified bootstrap interval, exact McNemar p)."""
    from eval.stats import paired_difference_over_sets

    sets = [(dict(enumerate(o)), dict(enumerate(base["outcomes"][key]))) for key, o in result["outcomes"].items()]
    return paired_difference_over_sets(sets)


def study_table(results: dict, methods, models) -> str:
    """Per scenario and model, each method pooled over seeds and streams: accuracy with its Wilson
    95% interval, the paired change from NoAdapt on the same samples with its stratified bootstrap
    interval (samples resampled within each (seed, stream)) and the exact McNemar p, as the
    language tables (eval.stats); and the seconds per sample."""
    from eval.stats import wilson_interval

    lines = [
        "| scenario | model | method | n | accuracy % [95% CI] | change from noadapt, points [95% CI] | McNemar p "
        "| ms/sample |",
        "|---|---|---|---:|---|---|---:|---:|",
    ]
    for scenario, per_model in results.items():
        for model in models:
            cells = per_model[model]
            base = cells.get("noadapt")
            for m in methods:
                out = cells[m]["outcomes"]
                n, k = sum(map(len, out.values())), sum(map(sum, out.values()))
                lo, hi = wilson_interval(k, n)
                row = f"| {scenario} | {model} | {m} | {n} | {100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |"
                if base is not None and m != "noadapt":
                    d = paired_change(cells[m], base)
                    row += f" {100 * d.diff:+.1f} [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}] | {d.p_mcnemar:.3g} |"
                else:
                    row += " - | - |"
                lines.append(row + f" {1000 * cells[m]['sec_per_sample']:.2f} |")
    return "\n".join(lines)


#: the plug-in columns and the method each is plugged into (the paper's plug-in ablation)
PLUGINS = {"zerosiam+eata": "eata", "zerosiam+deyo": "deyo"}


def plugin_table(results: dict, methods, models) -> str:
    """Each plug-in against its host on the same samples (the paper's +8.4 over EATA, +7.4 over
    DeYO): the paired change in points with its stratified bootstrap interval and McNemar p."""
    pairs = [(p, h) for p, h in PLUGINS.items() if p in methods and h in methods]
    lines = ["| scenario | model | " + " | ".join(f"{p} - {h}, points [95% CI] (McNemar p)" for p, h in pairs) + " |",
             "|---|---|" + "---|" * len(pairs)]
    for scenario, per_model in results.items():
        for model in models:
            cells = []
            for p, h in pairs:
                d = paired_change(per_model[model][p], per_model[model][h])
                cells.append(f"{100 * d.diff:+.1f} [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}] ({d.p_mcnemar:.2g})")
            lines.append(f"| {scenario} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overhead_table(results: dict, methods, models) -> str:
    """Milliseconds per sample (predict + update, wall time) per method, mean over scenarios, and the
    ratio to Tent's: the paper's overhead comparison."""
    lines = ["| method | " + " | ".join(f"{m} ms/sample" for m in models) + " | x Tent |",
             "|---|" + "---:|" * (len(models) + 1)]
    per = {m: [np.mean([results[s][mod][m]["sec_per_sample"] for s in results]) for mod in models] for m in methods}
    for m in methods:
        ratio = (f"{np.mean([a / b for a, b in zip(per[m], per['tent'])]):.2f}" if "tent" in per else "-")
        lines.append(f"| {m} | " + " | ".join(f"{1000 * v:.2f}" for v in per[m]) + f" | {ratio} |")
    return "\n".join(lines)


def norm_table(results: dict, methods, models) -> str:
    lines = [
        "| scenario | model | " + " | ".join(methods) + " |",
        "|---|---|" + "---:|" * len(methods),
    ]
    for scenario, per_model in results.items():
        for model in models:
            row = []
            for m in methods:
                v = per_model[model][m]["logit_norm_centered"]
                tail = v[-max(1, len(v) // 5) :]
                row.append(f"{np.mean(tail):.1f}")
            lines.append(f"| {scenario} | {model} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for scenario, per_model in results.items():
        for model, per_method in per_model.items():
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
            for method, r in per_method.items():
                n = np.array(r["n"])
                seen = np.cumsum(n)
                running = np.cumsum(np.array(r["batch_acc"]) * n) / seen
                norm = np.array(r["logit_norm"])
                w = max(1, int(len(norm) // 100))  # smooth batch-size-1 curves
                if w > 1:
                    norm = np.convolve(
                        np.pad(norm, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, "valid"
                    )
                axes[0].plot(seen, 100 * running, label=method)
                axes[1].plot(seen, norm, label=method)
            for ax in axes:
                for b in list(per_method.values())[0]["boundaries"][:-1]:
                    ax.axvline(b, color="grey", lw=0.5, ls=":")
                ax.set_xlabel("samples seen")
            axes[0].set_ylabel("running accuracy (%)")
            axes[1].set_ylabel("logit norm (L2)")
            axes[0].legend(fontsize=8)
            fig.suptitle(f"{scenario} / {model}")
            fig.tight_layout()
            p = out / f"{scenario}_{model}.png"
            fig.savefig(p, dpi=90)
            plt.close(fig)
            paths.append(p)
    return paths


def collapse_summary(results: dict, models) -> list[str]:
    """Tent and ZeroSiam against NoAdapt per scenario and model, each judged by its paired 95%
    interval: below or above NoAdapt only where the interval excludes 0."""

    def word(d) -> str:
        return "below" if d.ci_high < 0 else "above" if d.ci_low > 0 else "level with"

    lines = []
    for scenario, per_model in results.items():
        for model in models:
            r = per_model[model]
            tent, zs = (paired_change(r[m], r["noadapt"]) for m in ("tent", "zerosiam"))
            lines.append(
                f"{scenario}/{model}: NoAdapt {100 * r['noadapt']['acc']:.1f}; Tent {100 * tent.diff:+.1f} "
                f"[{100 * tent.ci_low:+.1f}, {100 * tent.ci_high:+.1f}], {word(tent)} NoAdapt; ZeroSiam "
                f"{100 * zs.diff:+.1f} [{100 * zs.ci_low:+.1f}, {100 * zs.ci_high:+.1f}], {word(zs)} NoAdapt"
            )
    return lines


# ---------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "vision_bench", help="output folder")
    p.add_argument("--quick", action="store_true", help="tiny models and streams: a smoke run in seconds")
    p.add_argument(
        "--sweep", action="store_true", help="run the learning-rate sweep on the held-out corruption"
    )
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(VISION_METHODS))
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument(
        "--corruptions",
        nargs="+",
        default=["gaussian_noise", "shot_noise", "defocus_blur", "contrast"],
        choices=list(CORRUPTIONS),
        help="corruptions of the per-corruption scenarios (label_shift, bs1, blind_spot)",
    )
    p.add_argument(
        "--mixed-corruptions",
        nargs="+",
        default=[c for c in CORRUPTIONS if c != HELD_OUT],
        choices=list(CORRUPTIONS),
        help="corruptions mixed in the `mixed` stream",
    )
    p.add_argument("--severity", type=int, default=5, choices=range(1, 6))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="corruption draws of the test set in label_shift")
    p.add_argument("--bs1-limit", type=int, default=None, help="cap on the samples of a batch-size-1 stream")
    p.add_argument(
        "--lr", type=float, nargs="+", default=None, help="base lr per model at batch 64 (default: table)"
    )
    p.add_argument("--seed", type=int, default=0, help="data split and model training seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="stream seeds: corruption draws, orders and DeYO's shuffles (quick: 0 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on 2 cores shared with other work)",
    )
    p.add_argument("--train-steps", type=int, default=None, help="cap the training steps (quick mode: 6)")
    p.add_argument(
        "--test-limit", type=int, default=None, help="use only the first N test images (quick: 32)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps = args.train_steps or 6
        args.test_limit = args.test_limit or 32
        args.corruptions = args.corruptions[:1]
        args.mixed_corruptions = args.mixed_corruptions[:2]
        args.batch_size = 16
        args.repeats = 1
        args.bs1_limit = args.bs1_limit or 6
        args.seeds = args.seeds[:2]
        if args.out == ROOT / "runs" / "vision_bench":
            args.out = args.out / "quick"
    if args.lr is not None and len(args.lr) not in (1, len(args.models)):
        p.error("--lr takes one value or one per model")
    return args


def sweep(models: dict[str, nn.Module], x, y, args, log) -> dict:
    """Accuracy of NoAdapt, Tent and ZeroSiam on the held-out corruption, i.i.d., over a grid of lrs."""
    xs = corrupt(x, HELD_OUT, args.severity, seed=args.seed * 1000 + 999)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed + 2))
    stream = batches(xs[perm], y[perm], args.batch_size)
    grid = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    out = {}
    for name, base in models.items():
        na = summarize([run_stream(base, "noadapt", stream, 0.0)[0]])["acc"]
        rows = {
            m: [summarize([run_stream(base, m, stream, lr)[0]])["acc"] for lr in grid]
            for m in ("tent", "zerosiam")
        }
        best = grid[int(np.argmax(rows["tent"]))]
        log(
            f"[sweep] {name} on {HELD_OUT} (severity {args.severity}, batch {args.batch_size}): noadapt {100 * na:.1f}"
        )
        for m, accs in rows.items():
            log(f"[sweep]   {m:9s} " + "  ".join(f"lr {lr:g}: {100 * a:.1f}" for lr, a in zip(grid, accs)))
        log(f"[sweep]   Tent's best lr: {best:g}")
        out[name] = {"noadapt": na, **rows, "grid": grid, "best": best}
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"results": {scenario: {model: {method: {...}}}}, "table": str, ...}."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def report_parts(results: dict, args: argparse.Namespace, lrs: dict, argv: list[str] | None) -> dict:
    """results.md's text and its tables: accuracy, with intervals, plug-ins against hosts, time per
    sample, logit norms and the Tent-against-ZeroSiam summary."""
    md = table(results, args.methods, args.models)
    header = [
        "# Vision collapse benchmark (digits, 32x32)",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'studies/vision_collapse.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        f"Severity {args.severity}; batch {args.batch_size} (bs1 and blind_spot: 1); SGD momentum 0.9; base lr at "
        f"batch 64 (scaled by batch/64), same for every method and for ZeroSiam's predictor: "
        + ", ".join(f"{m} {lr:g}" for m, lr in lrs.items())
        + ".",
        f"Per-corruption scenarios: {', '.join(args.corruptions)} (mean over them). "
        f"Mixed: {', '.join(args.mixed_corruptions)}. Stream seeds (corruption draws, orders, DeYO's shuffles): "
        f"{', '.join(map(str, args.seeds))}; models trained at seed {args.seed}.",
        "",
        "Accuracy (%), predictions made before each update; blind_spot: accuracy on the whole corrupted test set "
        "after adapting on the source model's errors only. Pooled over seeds and streams:",
        "",
    ]
    norm_md = norm_table(results, args.methods, args.models)
    summary = (
        collapse_summary(results, args.models) if {"noadapt", "tent", "zerosiam"} <= set(args.methods) else []
    )
    study_md = study_table(results, args.methods, args.models)
    overhead_md = overhead_table(results, args.methods, args.models)
    plugin_md = plugin_table(results, args.methods, args.models)
    text = "\n".join(
        header
        + [md, "", "With intervals (eval.stats, as the language tables):", "", study_md, "",
           "Each plug-in against its host, paired on the same samples:", "", plugin_md, "",
           "Time per sample (wall, predict + update, one thread; mean over scenarios):", "", overhead_md, "",
           "Centered logit norm, mean over the last 20% of each stream (first seed):", "", norm_md, ""]
        + (["Tent vs ZeroSiam against NoAdapt:", ""] + [f"- {s}" for s in summary] + [""] if summary else [])
    )
    return {"text": text, "table": md, "study": study_md, "overhead": overhead_md, "plugins": plugin_md,
            "summary": summary}


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    logs: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        logs.append(msg)

    t_start = time.time()
    x_tr, y_tr, x_te, y_te = load_data(args.seed)
    if args.test_limit:
        x_te, y_te = x_te[: args.test_limit], y_te[: args.test_limit]
    models = {
        m: load_or_train(m, x_tr, y_tr, args.seed, args.out / "weights", args.train_steps, log)
        for m in args.models
    }
    for name, model in models.items():
        with torch.no_grad():
            clean = float((model(x_te).argmax(-1) == y_te).float().mean())
        log(f"[{name}] clean test accuracy {100 * clean:.1f}% on {len(y_te)} images")
    if args.sweep:
        return {"sweep": sweep(models, x_te, y_te, args, log)}

    lrs = args.lr or [DEFAULT_LR[m] for m in args.models]
    lrs = dict(zip(args.models, lrs * len(args.models) if len(lrs) == 1 else lrs))
    # what a kept (scenario, model, method) result depends on besides its scenario and method
    settings = {k: getattr(args, k) for k in ("seed", "severity", "batch_size", "repeats", "bs1_limit", "corruptions",
                                              "mixed_corruptions")}
    keys = {name: {"model": name, "weights": _weights_digest(model), "lr": lrs[name], "test": len(y_te), **settings}
            for name, model in models.items()}
    results: dict = {}
    for scenario in args.scenarios:
        results[scenario] = {}
        for name, model in models.items():
            t0 = time.time()
            results[scenario][name] = run_scenario(
                scenario, model, x_te, y_te, args, lrs[name], args.seeds, args.out / "cells", keys[name], log
            )
            accs = ", ".join(f"{m} {100 * r['acc']:.1f}" for m, r in results[scenario][name].items())
            log(f"[{scenario}/{name}] {accs} ({time.time() - t0:.0f}s)")

    parts = report_parts(results, args, lrs, argv)
    text = parts.pop("text")
    (args.out / "results.md").write_text(text)
    compact = {
        s: {m: {k: {"acc": v["acc"], "samples": v["samples"], "sec_per_sample": v["sec_per_sample"],
                    "outcomes": {f"seed{a}/stream{b}": o for (a, b), o in v["outcomes"].items()}}
                for k, v in pm.items()} for m, pm in r.items()}
        for s, r in results.items()
    }
    (args.out / "results.json").write_text(json.dumps(compact, indent=1))
    pngs = plot(results, args.out)
    print()
    print(text)
    log(f"wrote {args.out / 'results.md'} and {len(pngs)} plots in {time.time() - t_start:.0f}s")
    return {"results": results, **parts, "plots": pngs, "lrs": lrs}


if __name__ == "__main__":
    main()
