"""`edgefl model …`: train and export the extractor (ONNX + TFLite), hash and verify model files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgefl import codec


def register(sub) -> None:
    model = sub.add_parser("model", help="extractor models: export, hash, verify, run").add_subparsers(
        dest="model_command", metavar="ACTION")
    p = model.add_parser("export", help="write the extractor as ONNX and TFLite from one set of weights")
    p.add_argument("--out", default=".", help="output folder (default: here)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help=".npz of trained weights (conv1_w, conv1_b, conv2_w, conv2_b; HWIO)")
    src.add_argument("--seed", type=int, default=0, help="seeded random initialisation (default 0)")
    p.add_argument("--version", type=int, help="model version (default: the .npz's, else 1)")
    p.add_argument("--format", choices=["onnx", "tflite", "both"], default="both")
    p.add_argument("--save-weights", action="store_true", help="also write the weights as extractor-vN.npz")
    p.set_defaults(func=export_cmd)

    p = model.add_parser("train", help="train the extractor's convolutional layers on the requester's own labelled "
                         "data (numpy), then export and describe it as `export` does")
    p.add_argument("--out", default=".", help="output folder (default: here)")
    p.add_argument("--data", default="generated",
                   help="the requester's public data: 'generated' digits (default), an .npz or a folder of MNIST "
                        "IDX files (its first --items images: with MNIST t10k these lie in the experiments' "
                        "training portion, never in their last 2,000 test images)")
    p.add_argument("--items", type=int, default=5000, help="how many images of it (default 5000)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order (default 0)")
    p.add_argument("--version", type=int, default=2, help="model version of the release (default 2)")
    p.add_argument("--format", choices=["onnx", "tflite", "both"], default="both")
    p.set_defaults(func=train_cmd)

    p = model.add_parser("hash", help="print the hash the cloud publishes for model files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=hash_cmd)

    p = model.add_parser("verify", help="check a model file against a published hash (exit 1 on mismatch)")
    p.add_argument("file")
    p.add_argument("--hash", required=True, help="hex, or a release .cbor written by `model export`")
    p.set_defaults(func=verify_cmd)

    p = model.add_parser("run", help="extract features from images (.npy or generated digits) with a backend")
    p.add_argument("file")
    p.add_argument("--hash", required=True, help="published hash (hex): the model is refused on mismatch")
    p.add_argument("--backend", help="onnxruntime | litert | tflite_runtime (default: the profile's ml.backend)")
    p.add_argument("--images", help=".npy of (n, 28, 28, 1) float32 images (default: 8 generated digits)")
    p.set_defaults(func=run_cmd)


def export_cmd(args) -> int:
    from edgefl.ml.extractor import ExtractorWeights

    w = ExtractorWeights.load(args.weights) if args.weights else ExtractorWeights.random(seed=args.seed)
    if args.version is not None:
        w = ExtractorWeights(**w.arrays(), version=args.version)
    if args.save_weights:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        w.save(Path(args.out) / f"extractor-v{w.version}.npz")
    write_release(w, Path(args.out), args.format)
    return 0


def train_cmd(args) -> int:
    import time

    from edgefl.ml.data import load_dataset
    from edgefl.ml.pretrain import train_extractor

    data = load_dataset(args.data, args.items, seed=args.seed)
    print(f"training the extractor on {len(data)} images of {args.data} ({args.epochs} epochs, batch {args.batch})")
    t0 = time.perf_counter()
    w, history = train_extractor(data.images, data.labels, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                                 seed=args.seed, version=args.version,
                                 on_epoch=lambda e, loss, acc: print(f"  epoch {e}: loss {loss:.4f}, training "
                                                                     f"accuracy {100 * acc:.1f} % "
                                                                     f"({time.perf_counter() - t0:.0f} s)"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w.save(out / f"extractor-v{w.version}.npz")
    print(f"{out / f'extractor-v{w.version}.npz'}  weights {w.digest().hex()}  (the cloud's fl.weights)")
    write_release(w, out, args.format, trained={"data": args.data, "items": len(data), "epochs": args.epochs,
                                                "batch": args.batch, "lr": args.lr, "seed": args.seed,
                                                "loss": history.loss, "accuracy": history.accuracy})
    return 0


def write_release(w, out: Path, formats: str = "both", **extra) -> dict:
    """Export ``w`` in each format with its ``ModelRelease`` (.release.cbor) and a JSON manifest; the manifest."""
    from edgefl.ml.export import FORMATS, SUFFIX, ModelRelease, export

    out.mkdir(parents=True, exist_ok=True)
    manifest = {"version": w.version, "weights": w.digest().hex(), "models": {}, **extra}
    for fmt in FORMATS if formats == "both" else [formats]:
        data = export(w, fmt)
        path = out / f"extractor-v{w.version}{SUFFIX[fmt]}"
        path.write_bytes(data)
        release = ModelRelease.of(data, w, fmt)
        (out / f"{path.name}.release.cbor").write_bytes(codec.encode_message(release))
        manifest["models"][fmt] = {"file": path.name, "hash": release.hash.hex(), "size": release.size}
        print(f"{path}  {release.hash.hex()}  {release.size} bytes")
    (out / f"extractor-v{w.version}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def hash_cmd(args) -> int:
    from edgefl.ml.export import model_hash, model_version, read_model

    for f in args.files:
        data = read_model(f)
        print(f"{model_hash(data).hex()}  v{model_version(data)}  {f}")
    return 0


def _expected(text: str) -> bytes:
    from edgefl.ml.export import ModelRelease

    if Path(text).is_file():
        return ModelRelease.from_wire(codec.decode(Path(text).read_bytes(), canonical=True)).hash
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"--hash {text!r} is neither 64 hex digits nor a release file") from None
    if len(raw) != 32:
        raise ValueError(f"--hash must be 32 bytes (64 hex digits), got {len(raw)}")
    return raw


def verify_cmd(args) -> int:
    from edgefl.ml.export import ModelHashMismatch, read_model, verify_model

    try:
        verify_model(read_model(args.file), _expected(args.hash))
    except ModelHashMismatch as exc:
        print(f"REFUSED {args.file}: {exc}")
        return 1
    print(f"ok {args.file}")
    return 0


def run_cmd(args) -> int:
    from edgefl.ml.backends import open_backend
    from edgefl.ml.data import synthetic_digits
    from edgefl.ml.export import read_model, verify_model

    data = verify_model(read_model(args.file), _expected(args.hash))
    backend = args.backend or args.config.ml.backend
    images = np.load(args.images, allow_pickle=False) if args.images else synthetic_digits(8).images
    with open_backend(backend, data, threads=args.config.ml.threads) as b:
        feats = b.run(images)
    print(f"{backend}: {feats.shape[0]} x {feats.shape[1]} features, mean {feats.mean():.4f}, "
          f"nonzero {np.count_nonzero(feats) / feats.size:.1%}")
    return 0
