"""NanoChat substrate: a small nanochat-style GPT trainer, installed as ``fusedgate.nanochat``.

    from fusedgate.nanochat.train import TrainConfig, train
    result = train(TrainConfig(preset="tiny", optimizer="fusedgate", spec=my_spec, seed=0))
    result.final_val_bpb, result.val_curve, result.gate_trajectory

Modules: ``model`` (the GPT and its nanochat-style param groups), ``muon`` (the baseline
MuonAdamW), ``schedule`` (lr / momentum / weight-decay schedules), ``data`` and ``tokenizer``
(corpora, split, fingerprint, batches), ``presets``, ``train`` (the loop), ``checkpoint``,
``metrics`` (JSONL log), ``compare`` and ``plots`` (``--compare`` report), ``cli``
(``fusedgate train``).
"""
