"""Evolutionary search over the GateSpec DSL, evaluated on real NanoChat training runs.

mutations.py         13 one-aspect operators and their registry
evaluate.py          a job = one real training run; run_job never raises
score.py             composite score, the win rule, Pareto frontier, Spearman's rho
archive.py           the SQLite archive (WAL, one transaction per finished run)
tournament.py        the resumable generation loop (screening -> confirmation -> elites)
executors.py         local process pool and Ray
external_mutator.py  --mutator-cmd: children from any program, with preflight
report.py            report.md + plots
calibrate.py         screening-vs-confirmation rank correlation
cli.py               fusedgate search run|resume|report|calibrate
"""
