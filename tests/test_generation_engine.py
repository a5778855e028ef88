"""The generation engine on a tiny contract-conforming encoder-decoder, in real ORT sessions.

What is checked: a request's tokens do not depend on when it was admitted or on what else
runs (greedy and seeded sampling), the finish reasons, cancellation freeing a slot, the
batch and cache bounds, the text pieces adding up to the final text, and the request-level
and one-at-a-time modes producing the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from generation_models import BOS_ID, EOS_ID, PAD_ID, random_inputs, tiny_generator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from worker.generation import Admission, Engine, GenerationSpec, Request, TokenEvent, words_of
from worker.generation.sampling import RowSampler, Sampling, sample, sample_rows
from worker.generation.spec import DecoderShape
from worker.generation.text import TextStream

CAP = 32


def _sessions(directory: Path) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return tuple(  # type: ignore[return-value]
        ort.InferenceSession(str(directory / "1" / f"{part}.onnx"), options)
        for part in ("encoder", "decoder")
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    directory = tiny_generator(tmp_path_factory.mktemp("generation"), max_new_tokens=CAP)
    encoder, decoder = _sessions(directory)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    spec = GenerationSpec(
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=PAD_ID,
        max_new_tokens=CAP,
        max_active=8,
        words=words_of(tokenizer, (BOS_ID, EOS_ID, PAD_ID)),
    )
    return encoder, decoder, spec


def engine(model, max_active: int = 8, admission: Admission = Admission.CONTINUOUS) -> Engine:
    encoder, decoder, spec = model
    spec = replace(spec, max_active=max_active)
    return Engine(encoder, decoder, spec, admission=admission, pad_values={"input_ids": PAD_ID})


def drive(e: Engine, schedule: Sequence[tuple[int, Request]]) -> dict:
    """Run ``schedule`` ((arrival step, request)...) to the end: each iteration admits what
    has arrived into the free slots, then steps once. Checks the batch and cache bounds at
    every step; returns each key's events."""
    events: dict = {r.key: [] for _, r in schedule}
    pending = sorted(schedule, key=lambda a: a[0])
    waiting: list[Request] = []
    i = 0
    while pending or waiting or e.active:
        while pending and pending[0][0] <= i:
            waiting.append(pending.pop(0)[1])
        before = len(e.active)
        waiting = e.admit(waiting)
        if e.admission is Admission.REQUEST and before:
            assert len(e.active) == before  # request-level: no joining a running batch
        assert len(e.active) <= e.spec.max_active
        for event in e.step():
            events[event.key].append(event)
        lengths = [len(events[k]) for k in e.active]
        assert e.cache_width == max(lengths, default=0)  # never wider than the longest
        i += 1
    return events


def tokens(events: list[TokenEvent]) -> list[int]:
    return [ev.token_id for ev in events]


def words(spec: GenerationSpec, ids: list[int], stop: Sequence[str] = ()) -> str:
    """The final text of ``ids``: their words, cut before the first stop string."""
    text = " ".join(w for i in ids if (w := spec.word(i)) is not None)
    found = [i for s in stop if (i := text.find(s)) >= 0]
    return text[: min(found)] if found else text


POOL = [random_inputs(np.random.default_rng(1000 + i)) for i in range(10)]
"""Preprocessed encoder inputs of ten requests (questions of 1 to 8 words)."""
OPTIONS = [
    {},
    {"max_new_tokens": 5},
    {"temperature": 1.0, "seed": 7},
    {"temperature": 0.7, "top_k": 5, "seed": 11},
    {"temperature": 1.3, "top_p": 0.8, "seed": 3},
    {"temperature": 1.0, "top_k": 8, "top_p": 0.9, "seed": 5, "max_new_tokens": 12},
    {"temperature": 1.0, "seed": 9, "stop": ["square", "a a", "n t"]},
]
_alone: dict = {}


def alone(model, inputs: int, option: int) -> list[TokenEvent]:
    """The events of one request run by itself (cached)."""
    if (inputs, option) not in _alone:
        request = Request("alone", POOL[inputs], **OPTIONS[option])
        _alone[inputs, option] = drive(engine(model, 1), [(0, request)])["alone"]
    return _alone[inputs, option]


arrivals = st.lists(
    st.tuples(
        st.integers(0, 25),
        st.integers(0, len(POOL) - 1),
        st.integers(0, len(OPTIONS) - 1),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals=arrivals, max_active=st.integers(1, 6))
def test_a_request_gets_the_tokens_it_gets_alone_whenever_it_arrives(
    model, arrivals, max_active
) -> None:
    """Greedy and seeded sampling alike, whatever else shares the batch and whenever it
    joins; the events also end with a finish reason and add up to the final text."""
    schedule = [(at, Request(n, POOL[x], **OPTIONS[o])) for n, (at, x, o) in enumerate(arrivals)]
    events = drive(engine(model, max_active), schedule)
    for n, (_, x, o) in enumerate(arrivals):
        expected = alone(model, x, o)
        assert events[n] == [ev._replace(key=n) for ev in expected]
        assert [ev.finish_reason for ev in events[n][:-1]] == [None] * (len(events[n]) - 1)
        assert events[n][-1].finish_reason in ("stop", "length")
        final = words(model[2], tokens(events[n]), OPTIONS[o].get("stop", ()))
        assert "".join(ev.piece for ev in events[n]) == final


@pytest.mark.parametrize("admission", [Admission.REQUEST, Admission.CONTINUOUS])
@pytest.mark.parametrize("max_active", [1, 3])
def test_request_level_and_one_at_a_time_give_the_same_tokens(model, admission, max_active):
    schedule = [
        (i // 2, Request(i, POOL[i % len(POOL)], **OPTIONS[i % len(OPTIONS)])) for i in range(12)
    ]
    events = drive(engine(model, max_active, admission), schedule)
    for i in range(12):
        assert tokens(events[i]) == tokens(alone(model, i % len(POOL), i % len(OPTIONS)))


def test_request_level_admits_only_into_an_empty_batch(model) -> None:
    e = engine(model, 4, Admission.REQUEST)
    assert e.free_slots == 4
    rest = e.admit([Request(i, POOL[i]) for i in range(6)])
    assert [r.key for r in rest] == [4, 5] and e.free_slots == 0
    e.step()
    assert e.admit(rest) == rest
    while e.active:
        e.step()
    assert e.free_slots == 4 and e.admit(rest) == []


def test_seeded_sampling_is_deterministic_and_seeds_matter(model) -> None:
    def run(seed: int) -> list[int]:
        request = Request("r", POOL[0], temperature=1.5, seed=seed, max_new_tokens=CAP)
        return tokens(drive(engine(model), [(0, request)])["r"])

    assert run(1) == run(1)
    assert len({tuple(run(s)) for s in range(6)}) > 1


@pytest.mark.parametrize("cut", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "top_p": 0.5}])
def test_top_k_1_and_a_tiny_top_p_are_greedy(model, cut) -> None:
    schedule = [
        (0, Request(seed, POOL[seed], temperature=2.0, seed=seed, **cut)) for seed in range(6)
    ]
    events = drive(engine(model), schedule)
    for seed in range(6):
        assert tokens(events[seed]) == tokens(alone(model, seed, 0))


def test_finish_reasons_eos_and_length(model) -> None:
    greedy = [alone(model, x, 0) for x in range(len(POOL))]
    assert all(ev[-1].finish_reason == "stop" and ev[-1].token_id == EOS_ID for ev in greedy)
    assert len({len(ev) for ev in greedy}) > 2  # sequences end at varied steps
    shortest = min(len(ev) for ev in greedy)
    events = drive(engine(model), [(0, Request(x, POOL[x], max_new_tokens=3)) for x in range(3)])
    assert shortest > 3
    for x in range(3):
        assert tokens(events[x]) == tokens(greedy[x])[:3]
        assert events[x][-1].finish_reason == "length"
    over = drive(engine(model), [(0, Request("x", POOL[0], max_new_tokens=10 * CAP))])
    assert len(over["x"]) == len(greedy[0])  # the cap bounds, EOS came first
    ignore = drive(engine(model), [(0, Request("x", POOL[0], ignore_eos=True))])
    assert len(ignore["x"]) == CAP and ignore["x"][-1].finish_reason == "length"
    assert tokens(ignore["x"])[: len(greedy[0])] == tokens(greedy[0])


def test_stop_strings_end_the_text_before_them(model) -> None:
    spec = model[2]
    full = alone(model, 1, 0)
    text = "".join(ev.piece for ev in full)
    parts = text.split(" ")
    assert len(parts) >= 4
    for stop in (parts[2], f"{parts[2]} {parts[3]}", parts[2][1:], "no such words"):
        events = drive(engine(model), [(0, Request("s", POOL[1], stop=["zzz", stop]))])["s"]
        final = "".join(ev.piece for ev in events)
        expected = text[: text.find(stop)] if stop in text else text
        assert final == expected
        assert events[-1].finish_reason == "stop"
        assert tokens(events) == tokens(full)[: len(events)]
        if stop in text:
            assert words(spec, tokens(events)).find(stop) == len(final)


def test_text_stream_holds_back_what_may_start_a_stop_string() -> None:
    vocab = ["red", "square", "blue", None]
    stream = TextStream(lambda i: vocab[i], stop=["e sq"])
    assert stream.push(2) == ("blu", False)  # "e" could start "e sq"
    assert stream.push(3) == ("", False)  # a special token: no text
    assert stream.push(0) == ("e red", False)
    assert stream.push(2) == (" blu", False)
    assert stream.push(1) == ("", True)  # "blue red blue square" stops at "e sq"
    assert stream.text == "blue red blu"
    plain = TextStream(lambda i: vocab[i])
    assert [plain.push(i)[0] for i in (3, 0, 1, 2)] == ["", "red", " square", " blue"]


def test_cancel_frees_the_slot_for_the_next_admission(model) -> None:
    e = engine(model, 2)
    long = [Request(k, POOL[0], ignore_eos=True) for k in ("a", "b")]
    assert e.admit(long) == []
    waiting = e.admit([Request("c", POOL[1])])
    assert [r.key for r in waiting] == ["c"] and e.free_slots == 0
    e.step()
    e.step()
    width = e.cache_width
    event = e.cancel("a", "deadline")
    assert event == TokenEvent("a", None, "", "deadline")  # no token; no text held back
    assert e.active == ["b"] and e.free_slots == 1
    assert e.cancel("a") is None
    assert e.admit(waiting) == [] and e.active == ["b", "c"]
    assert e.cache_width == width  # b still uses every column
    ev = e.step()
    assert [x.key for x in ev] == ["b", "c"]
    assert tokens(drive(engine(model), [(0, Request("c", POOL[1]))])["c"])[0] == ev[1].token_id


def test_the_cache_and_encoder_states_shrink_when_long_rows_leave(model) -> None:
    e = engine(model, 3)
    e.admit([Request("long", random_inputs(np.random.default_rng(0), 8), ignore_eos=True)])
    for _ in range(10):
        e.step()
    e.admit([Request("short", random_inputs(np.random.default_rng(1), 1), ignore_eos=True)])
    assert e.cache.source_width == 4 + 9  # image patches + [CLS] + 8 words
    e.step()
    assert e.cache_width == 11
    e.cancel("long")
    assert e.cache_width == 1 and e.cache.source_width == 4 + 2
    assert e.cache.attention_mask().tolist() == [[1, 1]]


def test_admit_validates_before_running_anything(model) -> None:
    e = engine(model)
    with pytest.raises(ValueError, match="unique"):
        e.admit([Request("k", POOL[0]), Request("k", POOL[1])])
    with pytest.raises(ValueError, match="lacks encoder inputs"):
        e.admit([Request("k", {"input_ids": POOL[0]["input_ids"]})])
    assert e.active == [] and e.encoder_passes == 0
    e.admit([Request(i, POOL[i]) for i in range(5)])
    assert e.encoder_passes == 1 and len(e.active) == 5  # one encoder pass for all
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            Request("k", POOL[0], **bad)


def test_decoder_shape_is_read_from_the_graph(model) -> None:
    shape = DecoderShape.of(model[1])
    assert (shape.layers, shape.heads, shape.head_dim, shape.vocab) == (1, 2, 8, 20)
    assert shape.dtype is np.float32


def test_two_layers(model, tmp_path: Path) -> None:
    """A deeper decoder (L read from the graph) batches as exactly as the one-layer one."""
    encoder, decoder = _sessions(tiny_generator(tmp_path, layers=2, dim=24, heads=3, seed=1))
    spec = model[2]
    assert DecoderShape.of(decoder).layers == 2
    schedule = [(i, Request(i, POOL[i], temperature=i % 2, seed=i)) for i in range(6)]
    together = drive(Engine(encoder, decoder, spec), schedule)
    for at, request in schedule:
        by_itself = drive(Engine(encoder, decoder, replace(spec, max_active=1)), [(0, request)])
        assert tokens(together[request.key]) == tokens(by_itself[request.key]), at


def test_sampling_draws_one_number_per_row_and_step() -> None:
    logits = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    rows = [RowSampler(Sampling(), 1), RowSampler(Sampling(1.0), 2), RowSampler(Sampling(0.5), 3)]
    for _ in range(4):
        sample(logits, rows)
    for row, seed in zip(rows, (1, 2, 3), strict=True):
        fresh = np.random.default_rng(seed)
        fresh.random(4)
        assert row.rng.random() == fresh.random()


def test_sampling_cuts() -> None:
    logits = np.log(np.array([[0.5, 0.05, 0.3, 0.15]]))
    uniforms = np.linspace(0, 1, 200, endpoint=False)
    n = len(uniforms)

    def draws(top_k: int, top_p: float) -> set[int]:
        return set(
            sample_rows(
                np.repeat(logits, n, 0),
                np.ones(n),
                np.full(n, top_k),
                np.full(n, top_p),
                uniforms,
            ).tolist()
        )

    assert draws(0, 1.0) == {0, 1, 2, 3}
    assert draws(2, 1.0) == {0, 2}
    assert draws(0, 0.75) == {0, 2}  # 0.5 + 0.3 reaches 0.75
    assert draws(0, 0.85) == {0, 2, 3}
    assert draws(3, 0.5) == {0}
    ones = np.ones(n)
    every = sample_rows(np.repeat(logits, n, 0), ones, np.zeros(n, np.int64), ones, uniforms)
    counts = np.bincount(every, minlength=4)
    assert counts.tolist() == [100, 10, 60, 30]  # the inverse CDF over an even grid
