"""app.health: the figures behind Home Assistant's diagnostic sensors (bounded windows, rates, the board's
CPU temperature), with a controlled clock and a fake /sys/class/thermal tree."""

from __future__ import annotations

from pathlib import Path

from edgeverify.app.health import HOUR_S, LATENCY_WINDOW, MAX_RECENT, Health, cpu_temperature_zone, percentile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentiles_over_a_bounded_window() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0
    h = Health(thermal_root=Path("/nonexistent"))
    for i in range(LATENCY_WINDOW + 500):
        h.decided(10_000.0 if i < 500 else 10.0, False)  # the slow start has left the window
    lat = h.snapshot()["latency_ms"]
    assert lat == {"p50": 10.0, "p95": 10.0, "window": LATENCY_WINDOW}


def test_per_hour_rates_forget_the_previous_hour() -> None:
    clock = Clock()
    h = Health(thermal_root=Path("/nonexistent"), clock=clock)
    for i in range(30):
        h.decided(None, rejected=i % 3 == 0)
    snap = h.snapshot()
    assert (snap["decisions_per_hour"], snap["rejects_per_hour"]) == (30, 10) and snap["latency_ms"]["window"] == 0
    clock.now += HOUR_S / 2
    h.decided(5.0, True)
    clock.now += HOUR_S / 2 + 1  # the first 30 are over an hour old
    snap = h.snapshot()
    assert (snap["decisions_per_hour"], snap["rejects_per_hour"]) == (1, 1)
    for _ in range(MAX_RECENT + 10):  # a flood cannot grow it
        h.decided(1.0, False)
    assert h.snapshot()["decisions_per_hour"] == MAX_RECENT


def test_cpu_temperature_where_the_board_has_one(tmp_path: Path) -> None:
    assert cpu_temperature_zone(tmp_path) is None and Health(thermal_root=tmp_path).snapshot()["cpu_temp_c"] is None
    for i, (kind, temp) in enumerate((("acpitz", "30000"), ("cpu-thermal", "48312"), ("gpu-thermal", "40000"))):
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    assert cpu_temperature_zone(tmp_path) == tmp_path / "thermal_zone1" / "temp"
    assert Health(thermal_root=tmp_path).snapshot()["cpu_temp_c"] == 48.3
    (tmp_path / "thermal_zone1" / "temp").write_text("garbage")  # a zone that stops reading is None, not a crash
    h = Health(thermal_root=tmp_path)
    assert h.temperature_file is None and h.snapshot()["cpu_temp_c"] is None


def test_memory_and_uptime() -> None:
    clock = Clock()
    h = Health(thermal_root=Path("/nonexistent"), clock=clock)
    clock.now += 125.4
    snap = h.snapshot()
    assert snap["uptime_s"] == 125 and 10 < snap["rss_mb"] < 10_000
