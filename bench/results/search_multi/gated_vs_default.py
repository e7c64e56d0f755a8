"""The gated preset (the former default) against the reference (the default now: FusedGate nanochat(), bit-identical
to nanochat's MuonAdamW) at each confirmation horizon of the search archive: paired over the confirmation seeds.

    python bench/results/search_multi/gated_vs_default.py bench/results/search_multi/search.sqlite
"""

import sys

from fusedgate.files import markdown_table
from fusedgate.search import stats
from fusedgate.search.archive import Archive
from fusedgate.search.config import SearchConfig
from fusedgate.search.tournament import confirm_setting, evaluate_spec, tuned_scale
from fusedgate.spec import GateSpec


def main(db: str) -> None:
    archive = Archive.open(db)
    cfg, corpus = SearchConfig.from_dict(archive.config()), archive.get_meta("corpus")
    rows = []
    for h in cfg.horizons:
        setting = confirm_setting(cfg, h)
        for ref_scale in sorted({1.0, tuned_scale(archive, cfg, corpus, setting) or 1.0}):
            agg = evaluate_spec(archive, cfg, corpus, GateSpec.gated(), setting, 1.0, ref_scale)
            if agg is None:
                rows.append([h, f"x{ref_scale:g}", "not finished"] + [""] * 5)
                continue
            diffs = [-g for g in agg["gains"]]   # gated − reference: > 0 is worse
            m, sd = stats.mean_sd(diffs)
            rows.append([h, f"x{ref_scale:g}", len(diffs), f"{m:+.4f} ± {sd:.4f}", f"{stats.lower_bound(diffs):+.4f}",
                         f"{stats.upper_bound(diffs):+.4f}", sum(d > 0 for d in diffs),
                         " ".join(f"{d:+.4f}" for d in diffs)])
    print(markdown_table(["steps", "reference lr", "seeds", "gated − default (mean ± sd)", "95% lower", "95% upper",
                          "seeds worse", "per seed"], rows))
    archive.close()


if __name__ == "__main__":
    main(sys.argv[1])
