"""Where a `tfduch train` epoch goes: the same run under one switch at a time, in alternating rounds (issue 19).

    python bench/train_profile.py --data ../shared/data/ucm_captions --epochs 20 --rounds 2

Each setting trains the defaults (64 bits) on the cached features for ``--epochs`` epochs; rounds alternate the
settings so a change of machine load hits all alike. The table gives seconds per round and per epoch (best round).
"""

from __future__ import annotations

import argparse
import tempfile

SETTINGS = {
    "defaults (checkpoint every 5 epochs, TensorBoard on)": [],
    "no checkpoint, no TensorBoard": ["train.checkpoint=false", "train.tensorboard=false"],
    "checkpoint every epoch": ["train.checkpoint_every=1"],
    "paper objective (code discriminator step each batch)": ["loss.alpha=0.01", "train.checkpoint=false",
                                                             "train.tensorboard=false"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset folder or registered name")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from tfduch.config import load_config
    from tfduch.pipeline import prepare, training_features
    from tfduch.training.trainer import train

    base = [f"data.root={args.data}", f"model.bits={args.bits}", "train.verbose=0", f"train.epochs={args.epochs}"]
    features = training_features(prepare(load_config(None, base), progress=False))
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, overrides in SETTINGS.items():
            with tempfile.TemporaryDirectory() as out:
                _, summary = train(load_config(None, base + overrides), features, out)
            seconds[name].append(summary["train_seconds"])
            print(f"round {r}: {name}: {summary['train_seconds']:.1f} s", flush=True)
    print(f"\n| setting ({args.epochs} epochs, {args.bits} bits) | seconds per round | s per epoch (best) |")
    print("|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {min(values) / args.epochs:.3f} |")


if __name__ == "__main__":
    main()
