"""A plain PyTorch contrastive-hashing loop on tfduch's own cached features: the speed and accuracy reference.

Issue 19 compares `tfduch train` with an independent plain loop on the same features and split. This script is
that loop, written from the issue's description (not from tfduch's model code), so both are measured in one run on
one machine:

    per modality  Linear(d, 4096) -> BatchNorm1d -> ReLU -> Linear(4096, K) -> tanh
    loss = NT-Xent(image, caption) + NT-Xent(image, augmented image) + NT-Xent(caption, another caption)
           + 0.001 * ||B - h||^2 (image and caption codes) + 0.01 * bit balance;   no adversarial term
    B = sign(h_image + mean over the image's captions of h_text), refreshed after every epoch (eval mode)
    Adam lr 1e-4, weight decay 5e-4 (PyTorch's coupled L2), batch 256, tau = 1

NT-Xent is summed over the 2N anchors and the other terms are summed over the batch, the scale the reference
hyper-parameters were tuned for (tfduch's `loss.ntxent_reduction: sum`). Only the `[reference]` extra is needed
(`pip install -e ".[reference]"`: the CPU torch wheel).

    python bench/reference_loop.py --data ../shared/data/ucm_captions --bits 64 --seeds 0 [--tfduch]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def _heads(torch, image_dim: int, text_dim: int, bits: int):
    def head(d: int):
        return torch.nn.Sequential(torch.nn.Linear(d, 4096), torch.nn.BatchNorm1d(4096), torch.nn.ReLU(),
                                   torch.nn.Linear(4096, bits), torch.nn.Tanh())

    return head(image_dim), head(text_dim)


def _nt_xent(torch, a, b, tau: float = 1.0):
    n = a.shape[0]
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / tau - 1e9 * torch.eye(2 * n)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(logits, target, reduction="sum")


def train_reference(train, bits: int, epochs: int, seed: int, batch: int = 256):
    """Train the two heads on ``TrainingFeatures``; returns (image head, text head, seconds)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(train)
    image = torch.from_numpy(train.image)
    image_aug = torch.from_numpy(np.asarray(train.image_aug))
    captions = torch.from_numpy(train.captions)
    counts, choice = np.asarray(train.caption_counts), np.asarray(train.caption_choice)
    f_img, f_txt = _heads(torch, image.shape[1], captions.shape[2], bits)
    params = list(f_img.parameters()) + list(f_txt.parameters())
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=5e-4)
    mask = torch.from_numpy((np.arange(captions.shape[1])[None] < counts[:, None]).astype(np.float32))

    def targets():
        f_img.eval()
        f_txt.eval()
        with torch.no_grad():
            h_txt = f_txt(captions.reshape(-1, captions.shape[2])).reshape(n, captions.shape[1], bits)
            mean_txt = (h_txt * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            b = f_img(image) + mean_txt
        f_img.train()
        f_txt.train()
        return torch.where(b >= 0, 1.0, -1.0)

    start = time.perf_counter()
    b_all = targets()
    for _ in range(epochs):
        order = rng.permutation(n)
        for s in range(0, n, batch):
            idx = order[s:s + batch]
            if len(idx) < 2:
                continue
            view = rng.integers(0, image_aug.shape[0], len(idx))
            other = (choice[idx] + 1 + rng.integers(0, np.maximum(counts[idx] - 1, 1))) % counts[idx]
            ti = torch.from_numpy(idx)
            h_i, h_i2 = f_img(image[ti]), f_img(image_aug[torch.from_numpy(view), ti])
            h_t = f_txt(captions[ti, torch.from_numpy(choice[idx])])
            h_t2 = f_txt(captions[ti, torch.from_numpy(other)])
            b = b_all[ti]
            codes = (h_i, h_i2, h_t, h_t2)
            loss = (_nt_xent(torch, h_i, h_t) + _nt_xent(torch, h_i, h_i2) + _nt_xent(torch, h_t, h_t2)
                    + 0.001 * (((b - h_i) ** 2).sum() + ((b - h_t) ** 2).sum())
                    + 0.01 * sum((h.sum(0) ** 2).sum() / len(idx) for h in codes))
            opt.zero_grad()
            loss.backward()
            opt.step()
        b_all = targets()
    seconds = time.perf_counter() - start
    f_img.eval()
    f_txt.eval()
    return f_img, f_txt, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder or registered name")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--tfduch", action="store_true", help="also time `tfduch train` (defaults) in this run")
    args = parser.parse_args()

    import torch

    from tfduch.codes import sign
    from tfduch.config import load_config
    from tfduch.pipeline import evaluate_encoders, prepare, train_and_evaluate, training_features

    torch.set_num_threads(args.threads)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = load_config(None, [f"data.root={args.data}", f"model.bits={args.bits}", f"train.epochs={args.epochs}",
                                 f"train.seed={seed}", "train.verbose=0", "eval.plots=false"])
        prep = prepare(cfg, progress=False)
        f_img, f_txt, seconds = train_reference(training_features(prep), args.bits, args.epochs, seed)

        def encoder(head):
            def encode(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return sign(head(torch.from_numpy(np.asarray(x, np.float32))).numpy())
            return encode

        rep = evaluate_encoders(prep, encoder(f_img), encoder(f_txt), cfg.eval.k, cfg.eval.ks).summary()
        rows.append(("reference loop", seed, rep, seconds))
        if args.tfduch:
            with tempfile.TemporaryDirectory() as out:
                _, report, summary = train_and_evaluate(cfg, prep, out, plots=False)
            rows.append(("tfduch train (defaults)", seed, report.summary(), summary["train_seconds"]))
    k = 20
    print(f"\n| loop | seed | I→T mAP@{k} | T→I mAP@{k} | I→T AP@{k} std | training s |")
    print("| :--- | ---: | ---: | ---: | ---: | ---: |")
    for name, seed, rep, seconds in rows:
        print(f"| {name} | {seed} | {rep[f'i2t/map@{k}']:.4f} | {rep[f't2i/map@{k}']:.4f} | "
              f"{rep[f'i2t/map@{k}_std']:.4f} | {seconds:.1f} |")
    ref = [r[3] for r in rows if r[0] == "reference loop"]
    ours = [r[3] for r in rows if r[0] != "reference loop"]
    if ours:
        print(f"\nspeed ratio (reference seconds / tfduch seconds, >= 1.0 means tfduch is at least as fast): "
              f"{sum(ref) / sum(ours):.2f}")


if __name__ == "__main__":
    main()
