"""Served throughput against the model's own ceiling, side by side in one run.

For each model: in-process ONNX Runtime at its max batch size (all cores), then the
same model served (embedded Valkey, API, one worker with all cores for ORT) at
saturation, driven by wrk on loopback in two shapes: single-row ``/v2`` requests
from many connections (dynamic batching has to form the batches) and ``/v1`` lists
of raw text + PNG items (server-side preprocessing). Prints served ÷ raw.

Raw ORT runs on the providers a worker would choose (CUDA on a GPU host), at each of
``--batch-sizes``: the best one is the ceiling, and best ÷ batch 1 is what batching can
gain on this hardware (large on a GPU, small on a CPU).

Models: the shipped demo model, and a larger cross-attention model (about 5.5 M
parameters, random weights: speed does not depend on training) exported here.

    python -m benchmarks.ceiling [--duration 10] [--models demo,large] [--ort-threads N]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from benchmarks.common import CpuMeter, served, table, write_json
from benchmarks.wrk import V1_SCRIPT, V2_SCRIPT, wrk
from fusionserve.zoo import data

ROOT = Path(__file__).resolve().parent.parent
LARGE = {
    "dim": 256,
    "heads": 8,
    "mlp_ratio": 4,
    "text_layers": 1,
    "image_layers": 3,
    "fusion_layers": 2,
    "stem_channels": 32,
}


def export_large(repository: Path) -> int:
    """The ~5.5 M-parameter model, exported with the same code as the demo; its parameters."""
    import torch

    from fusionserve.zoo.export import export_to_repository
    from fusionserve.zoo.models import build_model
    from fusionserve.zoo.tokenizer import build_tokenizer

    torch.manual_seed(0)
    model = build_model(
        "cross_attention", len(data.LABELS), build_tokenizer().get_vocab_size(), **LARGE
    )
    result = export_to_repository(model, repository, "large", 1, "cross_attention", None)
    return result.parameters


def samples(n: int, repository: Path, name: str):
    from tokenizers import Tokenizer

    from fusionserve.zoo.tokenizer import encode_batch

    rows = data.generate(n, data.HELD_OUT_SEED)
    tokenizer = Tokenizer.from_file(str(repository / name / "tokenizer.json"))
    ids, mask = encode_batch(tokenizer, [s.question for s in rows])
    images = data.normalize(np.stack([s.image for s in rows]))
    return rows, {"input_ids": ids, "attention_mask": mask, "image": images}


def raw_session(path: Path, threads: int) -> ort.InferenceSession:
    from worker.runtime import choose_providers

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=choose_providers())


def raw_throughput(
    session: ort.InferenceSession, batch: dict[str, np.ndarray], seconds: float
) -> float:
    session.run(None, batch)
    rows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, batch)
        rows += len(batch["image"])
    return rows / (time.perf_counter() - start)


def raw_sweep(
    path: Path, batch: dict[str, np.ndarray], sizes: list[int], threads: int, seconds: float
) -> dict[int, float]:
    """Rows/s of in-process ORT at each batch size (a batch of n is its first n rows)."""
    session = raw_session(path, threads)
    per_size = {}
    for n in sizes:
        rows = {k: np.ascontiguousarray(np.resize(v, (n, *v.shape[1:]))) for k, v in batch.items()}
        per_size[n] = raw_throughput(session, rows, seconds)
    return per_size


def raw_session_providers() -> list[str]:
    from worker.runtime import choose_providers

    return choose_providers()


def v2_single_row(batch: dict[str, np.ndarray]) -> str:
    dtypes = {"int64": "INT64", "float32": "FP32"}
    inputs = [
        {
            "name": k,
            "shape": [1, *v.shape[1:]],
            "datatype": dtypes[v.dtype.name],
            "data": v[:1].ravel().round(5).tolist(),
        }
        for k, v in batch.items()
    ]
    return orjson.dumps({"inputs": inputs}).decode()


def v1_raw_list(rows: list[data.Sample]) -> str:
    items = [
        {"text": s.question, "image": base64.b64encode(data.png_bytes(s.image)).decode()}
        for s in rows
    ]
    return orjson.dumps({"items": items}).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--models", default="demo,large")
    parser.add_argument("--ort-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--list-size", type=int, default=16)
    parser.add_argument(
        "--batch-sizes", default="1,64", help="raw ORT batch sizes (the served cap is 64)"
    )
    args = parser.parse_args()
    sizes = sorted({int(b) for b in args.batch_sizes.split(",")} | {1})
    if not shutil.which("wrk"):
        parser.error("needs wrk on PATH (Debian package: wrk)")
    if any(b > 64 for b in sizes):
        print("note: the served model's max_batch_size is 64; larger raw batches are reference")
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        shutil.copytree(ROOT / "model_repository" / "demo", repository / "demo")
        with (repository / "demo" / "config.toml").open("rb") as fh:
            params = {"demo": tomllib.load(fh)["training"]["parameters"]}
        if "large" in args.models:
            params["large"] = export_large(repository)
        for name in args.models.split(","):
            max_batch = 64
            rows, batch = samples(max_batch, repository, name)
            onnx_path = repository / name / "1" / "model.onnx"
            sweep = raw_sweep(onnx_path, batch, sizes, args.ort_threads, args.duration / 4)
            best = max(sweep, key=sweep.__getitem__)
            raw = sweep[best]
            with served(repository, name, ort_threads=args.ort_threads) as stack:
                v2_url = f"{stack.url}/v2/models/{name}/infer"
                v2_script = V2_SCRIPT.format(body=v2_single_row(batch))
                wrk(v2_url, v2_script, 2, args.connections)  # warm-up
                meter = CpuMeter(stack)
                meter.start()
                single = wrk(v2_url, v2_script, args.duration, args.connections)
                single_cpu = meter.stop()
                v1_script = V1_SCRIPT.format(
                    body=v1_raw_list(rows[: args.list_size]),
                    model=name,
                    last_row=args.list_size - 1,
                )
                meter.start()
                lists = wrk(stack.url, v1_script, args.duration, args.connections // 4)
                lists_cpu = meter.stop()
            served_rows = {
                "/v2 single rows": single["requests_per_s"],
                f"/v1 raw lists of {args.list_size}": lists["finished"]
                * args.list_size
                / args.duration,
            }
            cpu = {"/v2 single rows": single_cpu, f"/v1 raw lists of {args.list_size}": lists_cpu}
            for shape, per_s in served_rows.items():
                cores = {f"{k}_cores": round(v / args.duration, 2) for k, v in cpu[shape].items()}
                rows_out.append(
                    {
                        "model": name,
                        "parameters": params.get(name),
                        "client": shape,
                        "providers": "+".join(
                            p.removesuffix("ExecutionProvider") for p in raw_session_providers()
                        ),
                        "raw_best_batch": best,
                        "raw_ort_per_s": round(raw),
                        "batching_gain": round(raw / sweep[1], 2),
                        "served_per_s": round(per_s),
                        "served_over_raw": round(per_s / raw, 3),
                        **cores,
                    }
                )
    print(f"ORT threads {args.ort_threads}, max batch 64, wrk {args.connections} connections\n")
    print(table(rows_out, list(rows_out[0])))
    print(f"\nwrote {write_json('ceiling', {'args': vars(args), 'rows': rows_out})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
