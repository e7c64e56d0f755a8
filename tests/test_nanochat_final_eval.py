"""The larger final evaluation: spread over the whole val split, its sampling error, the curve unchanged."""

import pytest
import torch

from fusedgate.nanochat.data import load_data, val_batches_spread
from fusedgate.nanochat.train import TrainConfig, bits_per_byte, sampling_error, train


def test_final_eval_is_spread_and_reports_its_sampling_error(corpus):
    small = train(TrainConfig(preset="test", steps=4, data=corpus, progress=False))
    big = train(TrainConfig(preset="test", steps=4, data=corpus, progress=False, final_eval_tokens=4096))
    assert small.val_curve == [{**c, "wall_s": c2["wall_s"]} for c, c2 in zip(big.val_curve, small.val_curve)]
    assert small.final_val_bpb == small.val_curve[-1]["val_bpb"] and small.final_val_tokens == 512
    assert big.final_val_tokens == 4096 and len(big.final_val_batches) == 4096 // 32 // 4
    nats = [n for n, _ in big.final_val_batches]
    nbytes = [b for _, b in big.final_val_batches]
    assert big.final_val_bpb == pytest.approx(bits_per_byte(nats, nbytes))
    assert big.final_val_se == pytest.approx(sampling_error(nats, nbytes)) and 0 < big.final_val_se < 1
    # the windows are spread evenly over the whole val stream, not its prefix
    data = load_data(corpus, "byte", 256 * 1024 * 1024)
    total = (len(data.val) - 1) // 32
    assert total > 128  # more val than the budget, so where the windows sit matters
    windows = torch.cat([x for x, _ in val_batches_spread(data, 4, 32, 4096)])
    assert windows.shape == (128, 32)
    for i in (0, 1, 64, 127):
        start = (i * total // 128) * 32
        assert windows[i].tolist() == data.val[start : start + 32].astype("int64").tolist()
    assert (127 * total // 128) * 32 > len(data.val) * 0.9
