"""Generation in-process (issue 16): the decoder's ceiling, and three ways of batching it.

(a) The ceiling: decoder steps/s and tokens/s at active batch sizes 1, 2, 4, ..., 64, one
ORT call per step: the bare decoder call (a cache of ``--width`` columns), and the engine's
whole step (call, sampling, cache bookkeeping) over a full generation of ``max_new_tokens``.

(b) A mixed workload (short and long outputs, requests arriving on a fixed Poisson schedule)
run in real time by the same engine three ways: iteration-level (free slots are filled at
every step), request-level (a batch is admitted only when the last one has finished) and
one at a time. Reports tokens/s, time to first token and inter-token latency p50/p99.

The model is a directory in the generation contract's layout (default
``model_repository/captioner``); ``--tiny`` builds the tests' tiny random-weight model
instead. Output lengths are fixed by the workload (EOS is ignored) unless ``--eos``.

    python -m benchmarks.generation [--model DIR | --tiny] [--requests 500] [--rate R]
        [--served 1,8,32,64]

(c) With ``--served``: the same three ways, each a real stack (Valkey, API, one worker)
driven over HTTP by streaming clients (benchmarks/generation_served.py).

``mixed_workload`` and ``summarize`` are meant for the served comparison too: the workload
is arrivals (time, key, output length, payload); a trace is each request's arrival time and
the times its tokens arrived.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.common import table, write_json
from worker.generation import Admission, Engine, GenerationSpec, Request

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "model_repository" / "captioner"


@dataclass(frozen=True)
class Model:
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    spec: GenerationSpec
    pad_values: dict[str, int]
    text_input: str | None


def load(directory: Path, threads: int) -> Model:
    """The newest version of a generation model directory, loaded as a worker loads it."""
    import os

    from worker.generation.runtime import GenerationRuntime
    from worker.repository import load_model_files

    os.environ["FUSIONSERVE_ORT_THREADS"] = str(threads)
    files = load_model_files(directory)
    runtime = GenerationRuntime(files)
    text = files.config.preprocessing.text
    return Model(
        runtime.encoder,
        runtime.decoder,
        runtime.spec,
        files.config.preprocessing.pad_values(),
        text.ids_input if text else None,
    )


def synthetic_inputs(model: Model, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One request's encoder inputs shaped by the encoder's graph: a question of 4 to 12 of
    the tokenizer's words, a mask of ones, normal noise for images and audio."""
    words = [i for i, w in enumerate(model.spec.words) if w is not None]
    length = int(rng.integers(4, 13))
    out: dict[str, np.ndarray] = {}
    for node in model.encoder.get_inputs():
        shape = [1] + [d if isinstance(d, int) else length for d in node.shape[1:]]
        if node.type == "tensor(int64)":
            if node.name == model.text_input or model.text_input is None:
                out[node.name] = rng.choice(words, size=shape).astype(np.int64)
            else:
                out[node.name] = np.ones(shape, np.int64)
        else:
            out[node.name] = rng.standard_normal(shape).astype(np.float32)
    return out


# --- the ceiling -------------------------------------------------------------------------


def raw_decoder_rate(model: Model, batch: int, width: int, seconds: float) -> float:
    """Decoder calls per second at ``batch`` rows and a cache of ``width`` columns."""
    rng = np.random.default_rng(0)
    engine = Engine(model.encoder, model.decoder, replace(model.spec, max_active=batch))
    engine.admit([Request(i, synthetic_inputs(model, rng)) for i in range(batch)])
    shape = engine.shape
    feeds = engine.cache.feeds(np.full(batch, model.spec.bos_id))
    feeds["position_ids"] = np.full((batch, 1), width, np.int64)
    feeds["attention_mask"] = np.ones((batch, width + 1), np.int64)
    for name in shape.past_names():
        dims = (batch, shape.heads, width, shape.head_dim)
        feeds[name] = rng.standard_normal(dims).astype(shape.dtype)
    return _rate(lambda: model.decoder.run(engine.outputs, feeds), seconds)


def _rate(call: Callable[[], Any], seconds: float) -> float:
    call()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        call()
        n += 1
    return n / (time.perf_counter() - start)


def engine_step_rate(model: Model, batch: int, seconds: float) -> float:
    """Engine steps per second with ``batch`` rows generating ``max_new_tokens`` each (the
    cache grows from 0 to the cap); admission is not timed."""
    rng = np.random.default_rng(1)
    inputs = [synthetic_inputs(model, rng) for _ in range(batch)]
    steps, spent = 0, 0.0
    while steps < 3 * model.spec.max_new_tokens or spent < seconds:
        engine = Engine(model.encoder, model.decoder, replace(model.spec, max_active=batch))
        engine.admit([Request(i, x, ignore_eos=True) for i, x in enumerate(inputs)])
        start = time.perf_counter()
        while engine.active:
            engine.step()
            steps += 1
        spent += time.perf_counter() - start
    return steps / spent


def ceiling(model: Model, sizes: Sequence[int], width: int, seconds: float) -> list[dict]:
    rows = []
    for batch in sizes:
        raw = raw_decoder_rate(model, batch, width, seconds)
        steps = engine_step_rate(model, batch, seconds)
        rows.append(
            {
                "batch": batch,
                "decoder_calls_per_s": round(raw, 1),
                "decoder_tokens_per_s": round(raw * batch),
                "engine_steps_per_s": round(steps, 1),
                "engine_tokens_per_s": round(steps * batch),
                "engine_step_ms": round(1000 / steps, 3),
            }
        )
    return rows


# --- the workload ------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    at_s: float
    """Seconds after the start of the run."""
    key: int
    max_new_tokens: int
    payload: Any
    """What the driver sends: encoder inputs in-process, a request body when served."""


def mixed_workload(
    n: int,
    rate: float,
    make_payload: Callable[[np.random.Generator], Any],
    *,
    short: int,
    long: int,
    long_share: float = 0.3,
    seed: int = 0,
) -> list[Arrival]:
    """``n`` requests arriving as a Poisson process of ``rate`` per second (a fixed schedule
    for a seed): ``long_share`` of them want ``long`` tokens, the others ``short``."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    times -= times[0]
    lengths = np.where(rng.random(n) < long_share, long, short)
    return [
        Arrival(float(t), i, int(m), make_payload(rng))
        for i, (t, m) in enumerate(zip(times, lengths, strict=True))
    ]


@dataclass
class Trace:
    arrived_s: float
    token_s: list[float] = field(default_factory=list)
    """When each token reached the caller, seconds after the start of the run."""


def summarize(traces: Sequence[Trace]) -> dict[str, float]:
    """Tokens/s over the run, time to first token and inter-token latency p50/p99 (ms)."""
    tokens = sum(len(t.token_s) for t in traces)
    end = max(t.token_s[-1] for t in traces if t.token_s)
    first = np.array([t.token_s[0] - t.arrived_s for t in traces if t.token_s]) * 1000
    gaps = np.concatenate([np.diff(t.token_s) for t in traces if len(t.token_s) > 1]) * 1000
    done = np.array([t.token_s[-1] - t.arrived_s for t in traces if t.token_s]) * 1000
    return {
        "tokens_per_s": round(tokens / end, 1),
        "ttft_p50_ms": round(float(np.percentile(first, 50)), 2),
        "ttft_p99_ms": round(float(np.percentile(first, 99)), 2),
        "itl_p50_ms": round(float(np.percentile(gaps, 50)), 3),
        "itl_p99_ms": round(float(np.percentile(gaps, 99)), 3),
        "latency_p50_ms": round(float(np.percentile(done, 50)), 1),
        "latency_p99_ms": round(float(np.percentile(done, 99)), 1),
        "makespan_s": round(end, 2),
    }


def run_in_process(engine: Engine, workload: Sequence[Arrival], eos: bool = False) -> list[Trace]:
    """Play ``workload`` in real time through ``engine``: each iteration admits what has
    arrived into the free slots, then steps once; waits when idle until the next arrival."""
    traces = {a.key: Trace(a.at_s) for a in workload}
    pending = sorted(workload, key=lambda a: a.at_s)
    waiting: list[Request] = []
    start = time.perf_counter()
    i = 0
    while i < len(pending) or waiting or engine.active:
        now = time.perf_counter() - start
        while i < len(pending) and pending[i].at_s <= now:
            a = pending[i]
            waiting.append(Request(a.key, a.payload, a.max_new_tokens, ignore_eos=not eos))
            i += 1
        if waiting and engine.free_slots:
            waiting = engine.admit(waiting)
        if not engine.active:
            time.sleep(max(0.0, pending[i].at_s - (time.perf_counter() - start)))
            continue
        events = engine.step()
        now = time.perf_counter() - start
        for event in events:
            traces[event.key].token_s.append(now)
    return list(traces.values())


def compare(
    model: Model, workload: Sequence[Arrival], max_active: int, eos: bool
) -> list[dict[str, Any]]:
    ways = {
        "iteration-level": (Admission.CONTINUOUS, max_active),
        "request-level": (Admission.REQUEST, max_active),
        "one at a time": (Admission.CONTINUOUS, 1),
    }
    rows = []
    for name, (admission, active) in ways.items():
        spec = replace(model.spec, max_active=active)
        engine = Engine(
            model.encoder, model.decoder, spec, admission=admission, pad_values=model.pad_values
        )
        traces = run_in_process(engine, workload, eos)
        rows.append(
            {
                "batching": name,
                "max_active": active,
                **summarize(traces),
                "decoder_calls": engine.steps,
                "encoder_calls": engine.encoder_passes,
            }
        )
    return rows


def tiny_model(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from generation_models import tiny_generator

    return tiny_generator(directory, max_active=32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help=f"default {DEFAULT_MODEL.relative_to(ROOT)}")
    parser.add_argument("--tiny", action="store_true", help="build the tests' tiny model")
    parser.add_argument("--ort-threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=1.0, help="per ceiling point")
    parser.add_argument("--width", type=int, help="raw decoder cache columns (default cap/2)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rate", type=float, help="arrivals/s (default 3x one-at-a-time)")
    parser.add_argument("--max-active", type=int, help="default: the model's max_active")
    parser.add_argument("--short", type=int, help="short outputs' tokens (default cap/8)")
    parser.add_argument("--long-share", type=float, default=0.3)
    parser.add_argument("--eos", action="store_true", help="end at EOS (lengths vary)")
    parser.add_argument(
        "--served",
        metavar="CLIENTS",
        help="also serve the model three ways and drive it over HTTP at these concurrencies "
        "(e.g. 1,8,32,64; benchmarks/generation_served.py)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            directory = tiny_model(Path(tmp))
        else:
            directory = args.model or DEFAULT_MODEL
            if not (directory / "config.toml").is_file():
                parser.error(f"no model at {directory}: name one with --model, or use --tiny")
        model = load(directory, args.ort_threads)
        cap = model.spec.max_new_tokens
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        ceiling_rows = ceiling(model, sizes, args.width or cap // 2, args.seconds)
        print(f"model {directory.name}, providers {model.decoder.get_providers()[0]}, ", end="")
        print(f"ORT threads {args.ort_threads}, max_new_tokens {cap}\n")
        print("(a) the ceiling: one decoder call per step")
        print(table(ceiling_rows, list(ceiling_rows[0])))

        short, long = args.short or max(1, cap // 8), cap
        mean_tokens = (1 - args.long_share) * short + args.long_share * long
        one_at_a_time = ceiling_rows[0]["engine_steps_per_s"] / mean_tokens  # requests/s
        rate = args.rate or 3 * one_at_a_time
        max_active = args.max_active or model.spec.max_active
        rng = np.random.default_rng(2)
        inputs = [synthetic_inputs(model, rng) for _ in range(64)]
        workload = mixed_workload(
            args.requests,
            rate,
            lambda r: inputs[int(r.integers(len(inputs)))],
            short=short,
            long=long,
            long_share=args.long_share,
        )
        rows = compare(model, workload, max_active, args.eos)
        served_rows: tuple[str, list[dict], list[dict]] | None = None
        if args.served:
            from benchmarks.generation_served import served

            levels = [int(c) for c in args.served.split(",")]
            served_rows = served(directory, levels, per_client=4, short=short)
    print(
        f"\n(b) {args.requests} requests at {rate:,.0f}/s (Poisson), {args.long_share:.0%} "
        f"long ({long} tokens), the rest {short} tokens" + (" or fewer (EOS)" if args.eos else "")
    )
    print(table(rows, list(rows[0])))
    if served_rows is not None:
        from benchmarks.generation_served import print_served

        print("\n(c) ", end="")
        print_served(*served_rows)
    payload = {
        "args": vars(args),
        "model": directory.name,
        "providers": model.decoder.get_providers(),
        "rate_per_s": rate,
        "ceiling": ceiling_rows,
        "workload": rows,
        "served": served_rows and {"rows": served_rows[1], "ratios": served_rows[2]},
    }
    print(f"\nwrote {write_json('generation', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
