"""Evolutionary search over the GateSpec DSL, evaluated on real NanoChat training runs.

config.py            SearchConfig: the frozen configuration, one validator for the CLI and every resume
mutations.py         14 one-aspect operators and their registry
evaluate.py          a job = one real training run; run_job never raises
runner.py            running jobs into an archive (shared by the search, noise and calibration)
score.py             composite score, rank score, the win rule, Pareto frontier, Spearman's rho
stats.py             paired-t bounds, the minimal detectable effect, seeds needed
steps_to_target.py   the reference's ladder and a candidate's steps-equivalent ratio
phase.py             how much of a gate step_fraction explains (policy or schedule?)
archive.py           the SQLite archive (WAL, one transaction per finished run)
tournament.py        the resumable generation loop (screen -> confirm at every horizon -> robustness ->
                     transfer -> steps-to-target on held-out seeds)
executors.py         local process pool and Ray
external_mutator.py  --mutator-cmd: children from any program, with preflight
report.py            report.md + plots, one function per section
noise.py             the baseline's noise floor per horizon
calibrate.py         screening-vs-confirmation rank correlation
cli.py               fusedgate search run|resume|report|calibrate|noise
"""
