"""The SLO controller's decisions on a simulated clock and a known execution cost."""

import pytest

from batching.adaptive import ExecutionModel, RateMeter, Setting, SloController


def execution(a: float = 0.002, b: float = 0.0005) -> ExecutionModel:
    model = ExecutionModel()
    for size in (1, 4, 8, 16, 32, 64):
        model.add(size, a + b * size)
    return model


def test_execution_times_are_interpolated_and_extrapolated() -> None:
    model = execution()
    assert model.predict(40) == pytest.approx(0.002 + 0.0005 * 40)
    assert model.predict(80) == pytest.approx(0.002 + 0.0005 * 80)
    single = ExecutionModel()
    single.add(8, 0.004)
    assert single.predict(4) == pytest.approx(0.004) and single.predict(16) == pytest.approx(0.008)


def test_nothing_measured_runs_at_once() -> None:
    assert SloController(0.05, 64).decide(100.0, ExecutionModel()) == Setting(64, 0.0)


def test_light_load_gets_small_batches_and_little_delay() -> None:
    setting = SloController(0.05, 64).decide(10.0, execution())
    assert setting.max_batch_size == 1 and setting.max_queue_delay_s == 0.0


def test_the_cap_grows_with_load_and_stays_within_the_slo() -> None:
    controller, model = SloController(0.05, 64), execution()
    caps = []
    for rate in (100.0, 500.0, 1000.0, 1400.0):
        s = controller.decide(rate, model)
        assert s.max_batch_size / model.predict(s.max_batch_size) >= rate * controller.headroom
        assert s.max_queue_delay_s + 2 * model.predict(s.max_batch_size) <= 0.05 + 1e-9
        caps.append(s.max_batch_size)
    assert caps == sorted(caps) and caps[0] < caps[-1]


def test_overload_runs_full_batches_without_waiting() -> None:
    assert SloController(0.05, 64).decide(1e6, execution()) == Setting(64, 0.0)


def test_the_rate_meter_forgets_old_arrivals() -> None:
    meter = RateMeter(window_s=1.0)
    for t in range(10):
        meter.add(t * 0.1, 2)
    assert meter.rate(0.95) == pytest.approx(20.0)
    assert meter.rate(5.0) == 0.0
