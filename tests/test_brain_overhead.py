"""The overhead section of brain-eval (``fusedgate.brain.overhead``): a short real run, its bookkeeping."""

import json
import math

from fusedgate.brain.overhead import measure_overhead, state_bytes_8_groups
from fusedgate.brain.report import _floor_sentence


def test_overhead_measures_every_arm_and_states_the_floor():
    out = measure_overhead(blocks=1, steps=1, repeats=30)
    assert out["params"] == 475_136 and out["groups"] == 3
    assert out["base_full_ms"] > 0 and out["base_step_us"] > 0 and out["pass_us"] > 0
    for kind in ("neutral", "learning"):
        assert math.isfinite(out[kind]["step_extra_us"]) and out[kind]["full_ms"] > 0
    # 32 steps (2 + the 30 timed), window 10, one warm-up window: two exploring windows, seeded
    assert 0.0 <= out["duty"]["clip"] <= 1.0 and 0.0 <= out["duty"]["dampen"] <= 1.0
    assert out["duty"]["clip"] + out["duty"]["dampen"] > 0.0
    assert out["learning"]["report"]["steps"] == 32 and out["learning"]["report"]["alpha"] == 1.0
    # the warmdown arm: step only, α = 0, its test still undecided after 31 steps of a constant loss
    assert math.isfinite(out["warmdown"]["step_extra_us"]) and "full_ms" not in out["warmdown"]
    assert out["warmdown"]["report"]["alpha"] == 0.0 and out["warmdown"]["report"]["warmdown"]["status"] == "testing"
    # the sensing arm: learning (α = 1, its windows read and judged) with its knobs still exactly neutral
    sensing = out["sensing"]["report"]
    assert math.isfinite(out["sensing"]["step_extra_us"]) and sensing["alpha"] == 1.0 and sensing["windows"] == 3
    assert sensing["mean_decisions"] == {"scale": 1.0, "clip": 1.0, "dampen": 0.0}
    expect = (out["duty"]["clip"] + 4 * out["duty"]["dampen"]) * out["pass_us"]
    assert math.isclose(out["floor_us"], expect, rel_tol=1e-9)
    assert math.isclose(out["floor"], out["floor_us"] / (1000 * out["base_full_ms"]), rel_tol=1e-9)
    assert math.isclose(out["sense_floor_us"], 2 * out["pass_us"] / 10, rel_tol=1e-9)   # two reads per window
    sentence = _floor_sentence(out)
    assert f"{out['floor_us']:.0f} µs" in sentence and f"at least {out['floor_us'] + out['sense_floor_us']:.0f} µs" \
        in sentence


def test_trimmed_mean_drops_the_tails_only():
    from fusedgate.brain.overhead import trimmed_mean

    values = [1.0] * 48 + [-100.0, 100.0]
    assert trimmed_mean(values) == 1.0                      # 2 % of 50: one value cut from each end
    assert trimmed_mean([1.0, 2.0, 3.0]) == 2.0             # too few to cut: the plain mean


def test_state_fits_the_budget():
    torch_bytes, numpy_bytes = state_bytes_8_groups()
    assert 0 < torch_bytes <= 51_200 and 0 < numpy_bytes <= 51_200


def test_the_module_writes_the_section_alone(tmp_path, capsys):
    from fusedgate.brain.overhead import main

    assert main(["--out", str(tmp_path), "--blocks", "1", "--steps", "1", "--repeats", "12"]) == 0
    text = (tmp_path / "brain_overhead.md").read_text()
    assert "12 pairs; per step" in text and "**The floor.**" in text and "In the warmdown phase" in text
    assert "Learning with nothing to learn" in text
    assert json.loads((tmp_path / "brain_overhead.json").read_text())["repeats"] == 12
    capsys.readouterr()
