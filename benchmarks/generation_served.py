"""Generation served (issue 16): iteration-level vs request-level vs one at a time, over HTTP.

Each way of batching is a real stack (embedded Valkey, ``fusionserve api``, one
``fusionserve worker``) over a copy of the model whose ``[generation]`` says how to admit
(``admission``, ``max_active``). For each concurrency C, C clients send streaming
requests back to back (``/v1/models/<m>/generate``, ``"stream": true``): a mix of short
answers and long descriptions, fixed lengths (``ignore_eos``), the same list for every
way. Each token's arrival is timed at the client. Reported: tokens/s over the run,
time to first token and inter-token latency p50/p99, and the ratios the issue sets
(iteration-level over request-level).

    python -m benchmarks.generation_served [--model DIR | --tiny] [--concurrency 1,8,32,64]
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import table, write_json
from benchmarks.generation import DEFAULT_MODEL, ROOT, Trace, summarize, tiny_model

WAYS = {
    "iteration-level": ("continuous", None),
    "request-level": ("request", None),
    "one at a time": ("continuous", 1),
}


def configured_copy(source: Path, into: Path, admission: str, max_active: int) -> Path:
    """A copy of the model directory whose [generation] admits as asked."""
    target = into / source.name
    shutil.copytree(source, target)
    config = target / "config.toml"
    lines = config.read_text().splitlines()
    out, section = [], ""
    for line in lines:
        if line.startswith("["):
            section = line.strip()
        if section == "[generation]" and line.split("=")[0].strip() in ("admission", "max_active"):
            continue
        out.append(line)
        if line.strip() == "[generation]":
            out += [f'admission = "{admission}"', f"max_active = {max_active}"]
    config.write_text("\n".join(out) + "\n")
    return target


def request_bodies(model_dir: Path, n: int, short: int, long: int, seed: int = 3) -> list[dict]:
    """``n`` requests: a question with its picture, 30 % of them long (``long`` tokens)."""
    from fusionserve.zoo import data

    config = tomllib.loads((model_dir / "config.toml").read_text())
    image = config.get("preprocessing", {}).get("image")
    rng = np.random.default_rng(seed)
    bodies = []
    for i, sample in enumerate(data.generate(n, seed)):
        body: dict[str, Any] = {"text": sample.question, "stream": True, "ignore_eos": True}
        if image is not None:
            picture = sample.image
            if picture.shape[0] != image["height"]:
                size = (image["width"], image["height"])
                picture = np.asarray(Image.fromarray(picture).resize(size))
            body["image"] = base64.b64encode(data.png_bytes(picture)).decode()
        body["max_new_tokens"] = long if rng.random() < 0.3 else short
        body["seed"] = i
        bodies.append(body)
    return bodies


def drive(url: str, model: str, bodies: list[dict], concurrency: int) -> list[Trace]:
    """``concurrency`` clients send ``bodies`` back to back; every token's arrival timed."""
    traces: list[Trace] = []
    lock = threading.Lock()
    queue = list(reversed(bodies))
    start = time.perf_counter()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                trace = Trace(time.perf_counter() - start)
                with http.stream("POST", f"/v1/models/{model}/generate", json=body) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if line.startswith("event: token"):
                            trace.token_s.append(time.perf_counter() - start)
                        elif line.startswith("event: error"):
                            raise RuntimeError(f"error event: {line}")
                with lock:
                    traces.append(trace)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return traces


def serve_and_drive(
    model_dir: Path, admission: str, max_active: int, runs: list[tuple[int, list[dict]]]
) -> list[tuple[int, dict[str, float]]]:
    from fusionserve.embedded import EmbeddedRedis
    from fusionserve.launch import LocalStack

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        copy = configured_copy(model_dir, repo, admission, max_active)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        redis_server = EmbeddedRedis(Path(tmp) / "valkey", appendonly=False).start()
        try:
            with LocalStack(redis_server.url, repo, logs) as stack:
                stack.start_api(processes=1)
                stack.start_worker(copy.name)
                stack.wait_ready(copy.name, 1)
                drive(stack.url, copy.name, runs[0][1][:4], 2)  # warm-up
                return [(c, summarize(drive(stack.url, copy.name, b, c))) for c, b in runs]
        finally:
            redis_server.stop()


def served(
    directory: Path, levels: list[int], per_client: int, short: int | None = None
) -> tuple[str, list[dict], list[dict]]:
    """(a caption, one row per way and concurrency, iteration-level's ratios per level)."""
    config = tomllib.loads((directory / "config.toml").read_text())["generation"]
    cap = int(config.get("max_new_tokens", 32))
    max_active = int(config.get("max_active", 32))
    short = short or max(1, cap // 8)
    runs = [(c, request_bodies(directory, max(8, c * per_client), short, cap)) for c in levels]
    rows = []
    for name, (admission, active) in WAYS.items():
        for concurrency, summary in serve_and_drive(
            directory, admission, active or max_active, runs
        ):
            rows.append({"batching": name, "clients": concurrency, **summary})
            print(f"{name} at {concurrency}: {summary}", file=sys.stderr)
    ratios = []
    for c in levels:
        by = {r["batching"]: r for r in rows if r["clients"] == c}
        it, rq, one = by["iteration-level"], by["request-level"], by["one at a time"]
        ratios.append(
            {
                "clients": c,
                "tokens/s vs request-level": round(it["tokens_per_s"] / rq["tokens_per_s"], 2),
                "TTFT p99 vs request-level": round(it["ttft_p99_ms"] / rq["ttft_p99_ms"], 2),
                "tokens/s vs one at a time": round(it["tokens_per_s"] / one["tokens_per_s"], 2),
            }
        )
    caption = (
        f"served over HTTP, model {directory.name}: {cap} tokens for 30 % of requests, {short} "
        f"for the rest; max_active {max_active}; one API process, one worker"
    )
    return caption, rows, ratios


def print_served(caption: str, rows: list[dict], ratios: list[dict]) -> None:
    print(caption + "\n")
    print(table(rows, list(rows[0])))
    print("\niteration-level over the others (targets at 32: tokens/s >= 2, TTFT p99 <= 0.5)")
    print(table(ratios, list(ratios[0])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help=f"default {DEFAULT_MODEL.relative_to(ROOT)}")
    parser.add_argument("--tiny", action="store_true", help="build the tests' tiny model")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--short", type=int, help="short answers' tokens (default cap/8)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        directory = tiny_model(Path(tmp)) if args.tiny else (args.model or DEFAULT_MODEL)
        caption, rows, ratios = served(directory, levels, args.requests_per_client, args.short)
    print_served(caption, rows, ratios)
    print(f"\nwrote {write_json('generation_served', {'rows': rows, 'ratios': ratios})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
