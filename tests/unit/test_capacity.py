"""`appliance capacity`'s arithmetic (appliance/capacity.py) and its command line; measuring a running box is
tests/system/test_capacity.py's."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from appliance import capacity
from appliance.capacity import LARGE, SMALL, RoomCost, cost_table, fit
from appliance.cli import main

NOTE = RoomCost(pss_mb=capacity.NOTE_MB_PER_ROOM, cpu_cores=0.0, worker_mb=0.0, measured="the note")


def test_the_notes_own_figures_give_its_50_to_150_rooms_per_box() -> None:
    small, large = fit(SMALL, NOTE), fit(LARGE, NOTE)
    assert (small.rooms, small.bound_by) == ((16 * 1024 - 2048) // 110, "memory") == (130, "memory")
    assert 50 <= small.rooms <= 150
    assert large.rooms == (32 * 1024 - 2048) // 110


def test_the_smaller_of_memory_and_cpu_binds() -> None:
    cost = RoomCost(pss_mb=110, cpu_cores=0.05, worker_mb=300, measured="given")
    small = fit(SMALL, cost)
    assert small.by_memory == math.floor((16 * 1024 - 2048 - 300) / 110) == 127
    assert small.by_cpu == 112  # 8 vCPU x 70 % / 0.05, not 111 by a float's rounding
    assert (small.rooms, small.bound_by) == (112, "CPU")
    assert fit(SMALL, cost, stores_mb=3000).by_memory == math.floor((16 * 1024 - 2048 - 300 - 3000) / 110)


def test_the_cost_table_buys_the_boxes_the_rooms_need() -> None:
    rows = {row.rooms: row for row in cost_table(NOTE)}
    assert (rows[50].boxes, rows[50].total, rows[50].per_room) == (1, 150.0, 3.0)  # the note's $150
    assert rows[500].boxes == math.ceil(500 / 130) and rows[500].total == 4 * 100 + 200
    assert rows[5000].boxes == math.ceil(5000 / 279) and rows[5000].total == 18 * 200 + 1280
    huge = cost_table(RoomCost(pss_mb=40_000, cpu_cores=0, worker_mb=0, measured="given"))
    assert all(row.boxes == 0 and math.isinf(row.total) for row in huge)


def test_the_command_prints_both_boxes_and_the_table() -> None:
    done = CliRunner().invoke(main, ["capacity", "--pss-mb", "55", "--cpu-per-room", "0.02", "--json"])
    assert done.exit_code == 0, done.output
    figures = json.loads(done.output)
    assert [b["box"] for b in figures["boxes"]] == [SMALL.name, LARGE.name]
    assert figures["boxes"][0]["rooms"] == min(math.floor((16 * 1024 - 2048) / 55), 280)
    assert [row["rooms"] for row in figures["costs"]] == [50, 500, 5000]
    human = CliRunner().invoke(main, ["capacity", "--pss-mb", "55"])
    assert human.exit_code == 0 and "8 vCPU / 16 GB" in human.output and "CPU not counted" in human.output


def test_cpu_without_memory_is_a_usage_error() -> None:
    done = CliRunner().invoke(main, ["capacity", "--cpu-per-room", "0.1"])
    assert done.exit_code == 2 and "--cpu-per-room goes with --pss-mb" in done.output
