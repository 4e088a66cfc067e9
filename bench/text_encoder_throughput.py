"""Captions/s of tfduch's Keras MiniLM encoder vs the PyTorch reference, on the same captions, one run.

    python bench/text_encoder_throughput.py [--data DIR] [--batch-size 64] [--limit N] [--repeats 3]

Both sides get the same real captions (``captions.json`` in Karpathy format: ``images[*].sentences[*].raw``)
in the same batches, pad to the longest caption of each batch, truncate at 128 tokens, mean-pool and
L2-normalise; each is timed after a warm-up batch. Passes alternate Keras, PyTorch, Keras, … so
both sides see the same machine load (on a shared machine absolute numbers drift; the ratio is the
robust figure), and the best pass of each counts. The PyTorch side (``transformers.AutoModel`` +
``AutoTokenizer``) lives in a child process driven by this script, so TensorFlow and torch never share
a process (a CUDA-era ``triton`` beside the CPU torch wheel crashes when imported after TensorFlow);
the two never run at the same time. If torch or transformers is missing, only the Keras number is
printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    return Path(os.environ.get("TFDUCH_DATA", REPO.parent / "shared" / "data" / "ucm_captions"))


def load_captions(data_dir: Path, limit: int | None) -> list[str]:
    path = data_dir / "captions.json" if data_dir.is_dir() else data_dir
    if not path.is_file():
        sys.exit(f"No captions.json at {path}; pass --data DIR or set TFDUCH_DATA")
    data = json.loads(path.read_text(encoding="utf-8"))
    captions = [s["raw"] for image in data["images"] for s in image["sentences"]]
    return captions[:limit] if limit else captions


def batches(captions: list[str], size: int) -> list[list[str]]:
    return [captions[i : i + size] for i in range(0, len(captions), size)]


class KerasSide:
    """tfduch's encoder behind one traced ``tf.function`` (see ``text_encoder_function``)."""

    def __init__(self, captions: list[str], batch_size: int, threads: int | None) -> None:
        import tensorflow as tf

        if threads:  # must happen before TensorFlow runs its first op
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)

        from tfduch.encoders.minilm import build_text_encoder, text_encoder_function

        self.fn = text_encoder_function(build_text_encoder())
        self.groups = [tf.constant(b) for b in batches(captions, batch_size)]
        self.fn(self.groups[0])  # trace + warm-up

    def run_pass(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = np.concatenate([self.fn(g).numpy() for g in self.groups])
        return time.perf_counter() - start, out


def torch_worker(model_dir: str, captions_path: str, batch_size: int, max_length: int) -> None:
    """Child process (no TensorFlow in it): the sentence-transformers pipeline with transformers.

    Line protocol on stdin/stdout so the parent can interleave passes: it prints ``ready <version>``,
    then for each ``pass <out.npy> <threads>`` runs one timed pass with that many intra-op threads,
    saves the embeddings and prints the seconds; ``quit`` ends it.
    """
    import torch
    import transformers

    captions = json.loads(Path(captions_path).read_text(encoding="utf-8"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    groups = batches(captions, batch_size)

    @torch.inference_mode()
    def encode(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()

    encode(groups[0])  # warm-up
    print(f"ready {torch.__version__}", flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "quit":
            return
        torch.set_num_threads(int(rest[1]))
        start = time.perf_counter()
        emb = np.concatenate([encode(g) for g in groups])
        elapsed = time.perf_counter() - start
        np.save(rest[0], emb)
        print(f"{elapsed:.6f}", flush=True)


class TorchSide:
    """Drives :func:`torch_worker` in a child process."""

    def __init__(self, captions: list[str], batch_size: int, tmp: Path) -> None:
        from tfduch.encoders.minilm import DEFAULT_MAX_LENGTH, minilm_model_dir

        self.tmp = tmp
        captions_path = tmp / "captions.json"
        captions_path.write_text(json.dumps(captions), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [
            sys.executable,
            __file__,
            "--_torch-worker",
            str(minilm_model_dir()),
            str(captions_path),
            "--batch-size",
            str(batch_size),
            "--max-length",
            str(DEFAULT_MAX_LENGTH),
        ]
        self.stderr = open(tmp / "worker.err", "w+")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True
        )
        _, self.version = self._read().split()

    def _read(self) -> str:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.stderr.seek(0)
            sys.exit(f"PyTorch reference failed:\n{self.stderr.read()[-3000:]}")
        return line.strip()

    def run_pass(self, threads: int) -> tuple[float, np.ndarray]:
        out = self.tmp / "emb.npy"
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"pass {out} {threads}\n")
        self.proc.stdin.flush()
        elapsed = float(self._read())
        return elapsed, np.load(out)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.stderr.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="dataset folder or captions.json")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N captions")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side; the best counts")
    parser.add_argument("--no-torch", action="store_true", help="measure the Keras encoder only")
    parser.add_argument("--tf-threads", type=int, default=None, help="TensorFlow intra/inter-op threads")
    parser.add_argument(
        "--torch-threads",
        default=f"1,{os.cpu_count()}",
        help="comma-separated torch intra-op thread counts to try; PyTorch is credited with the best "
        "(on a busy machine all-core OpenMP can be several times slower than one thread)",
    )
    parser.add_argument("--max-length", type=int, default=128, help=argparse.SUPPRESS)  # worker only
    parser.add_argument("--_torch-worker", nargs=2, metavar=("MODEL", "CAPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._torch_worker:
        torch_worker(*args._torch_worker, args.batch_size, args.max_length)
        return

    sys.path.insert(0, str(REPO))
    captions = load_captions(args.data, args.limit)
    print(
        f"{len(captions)} captions from {args.data}, batch {args.batch_size}, best of {args.repeats} "
        f"interleaved passes, {os.cpu_count()} CPU cores"
    )
    have_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    with tempfile.TemporaryDirectory() as tmp:
        keras = KerasSide(captions, args.batch_size, args.tf_threads)
        reference = TorchSide(captions, args.batch_size, Path(tmp)) if have_torch and not args.no_torch else None
        thread_options = [int(t) for t in args.torch_threads.split(",") if t.strip()]
        keras_best = float("inf")
        torch_best = {t: float("inf") for t in thread_options}
        keras_emb = torch_emb = None
        try:
            for _ in range(args.repeats):  # alternate, so both sides see the same machine load
                elapsed, keras_emb = keras.run_pass()
                keras_best = min(keras_best, elapsed)
                for threads in thread_options if reference is not None else []:
                    elapsed, torch_emb = reference.run_pass(threads)
                    torch_best[threads] = min(torch_best[threads], elapsed)
        finally:
            if reference is not None:
                reference.close()

    keras_rate = len(captions) / keras_best
    tf_threads = args.tf_threads or "default"
    print(f"keras  (tf.function, in-graph tokenizer, {tf_threads} TF threads): {keras_rate:8.1f} captions/s")
    if reference is None:
        why = "--no-torch" if args.no_torch else "torch/transformers not installed"
        print(f"pytorch reference: not measured ({why}); only the Keras number is reported")
        return
    for threads, best in torch_best.items():
        print(f"pytorch {reference.version} ({threads} threads, transformers): {len(captions) / best:8.1f} captions/s")
    torch_rate = len(captions) / min(torch_best.values())
    print(f"ratio keras / best pytorch: {keras_rate / torch_rate:.2f}x")
    print(f"max |keras - pytorch| embedding difference: {np.abs(keras_emb - torch_emb).max():.2e}")


if __name__ == "__main__":
    main()
