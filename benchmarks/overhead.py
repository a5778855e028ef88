"""Latency at low load: what serving adds on top of the model, one sequential client.

For each model, in one run: raw in-process ONNX Runtime latency at batch 1, then the
same model served (embedded Valkey, API, one worker) through ``/v2`` (synchronous)
and ``/v1`` (submit, then long-poll). Prints p50/p99 and served minus raw.

    python -m benchmarks.overhead [--requests 2000] [--models mlp,demo]
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from benchmarks.common import Connection, percentiles, served, table, v2_body, write_json
from fusionserve.zoo.tiny_models import mlp_model

ROOT = Path(__file__).resolve().parent.parent


def model_inputs(name: str, repository: Path) -> tuple[dict[str, np.ndarray], dict]:
    """One row of inputs as tensors, and the ``/v1`` item for the same row."""
    if name == "mlp":
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        return {"x": x}, {"inputs": {"x": x[0].tolist()}}
    from tokenizers import Tokenizer

    from fusionserve.zoo import data
    from fusionserve.zoo.tokenizer import encode_batch

    [sample] = data.generate(1, data.HELD_OUT_SEED)
    tokenizer = Tokenizer.from_file(str(repository / name / "tokenizer.json"))
    ids, mask = encode_batch(tokenizer, [sample.question])
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "image": data.normalize(sample.image)[None],
    }
    item = {
        "text": sample.question,
        "image": base64.b64encode(data.png_bytes(sample.image)).decode(),
    }
    return tensors, item


def raw_latency(path: Path, tensors: dict[str, np.ndarray], n: int) -> list[float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options)
    for _ in range(20):
        session.run(None, tensors)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        session.run(None, tensors)
        out.append(time.perf_counter() - start)
    return out


def served_latency(url: str, model: str, tensors, item, n: int) -> dict[str, list[float]]:
    conn = Connection(url)
    v2 = v2_body(tensors)
    v1 = orjson.dumps(item)
    results: dict[str, list[float]] = {"v2": [], "v1": []}
    for _ in range(50):  # warm-up: connections, caches, the listener
        conn.post(f"/v2/models/{model}/infer", v2)
    for _ in range(n):
        start = time.perf_counter()
        status, body = conn.post(f"/v2/models/{model}/infer", v2)
        results["v2"].append(time.perf_counter() - start)
        assert status == 200, body
    for _ in range(n):
        start = time.perf_counter()
        status, body = conn.post(f"/v1/models/{model}/infer", v1)
        assert status == 202, body
        status, body = conn.get(f"{body['status_url']}?wait=5")
        results["v1"].append(time.perf_counter() - start)
        assert body["status"] == "done", body
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--models", default="mlp,demo")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        mlp_model(repository, delay_ms=2.0)
        demo = ROOT / "model_repository" / "demo"
        (repository / "demo").symlink_to(demo)
        for name in args.models.split(","):
            tensors, item = model_inputs(name, repository)
            onnx_path = next((repository / name).glob("*/model.onnx"))
            raw = percentiles(raw_latency(onnx_path, tensors, args.requests))
            with served(repository, name) as stack:
                lat = served_latency(stack.url, name, tensors, item, args.requests)
            for api in ("v2", "v1"):
                p = percentiles(lat[api])
                rows.append(
                    {
                        "model": name,
                        "api": "/v2 sync" if api == "v2" else "/v1 submit+poll",
                        "raw_p50_ms": raw["p50_ms"],
                        "raw_p99_ms": raw["p99_ms"],
                        "served_p50_ms": p["p50_ms"],
                        "served_p99_ms": p["p99_ms"],
                        "overhead_p50_ms": round(p["p50_ms"] - raw["p50_ms"], 3),
                        "overhead_p99_ms": round(p["p99_ms"] - raw["p99_ms"], 3),
                    }
                )
    print(table(rows, list(rows[0])))
    print(f"\nwrote {write_json('overhead', {'requests': args.requests, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
