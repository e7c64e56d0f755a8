"""The bad inputs ``fusedgate.bench.bad_inputs`` tries: fusedgate command lines and Python API calls, with what
each should do. ``$name`` is a fixture path (``bad_input_fixtures.Fixtures.names``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

OPTIMIZER = "optimizer core (param-group numbers)"
OPTBRAIN = "OptBrain (.npz ranges)"
LEAD = "lead (archive config)"
TRAIN = ("train", "--preset", "test", "--steps", "2", "--no-progress", "--out", "run")
SEARCH_RUN = ("search", "run", "--preset", "test", "--db", "s.sqlite", "--no-progress")
BRAIN = ("brain-eval", "--tasks", "nanochat", "--optimizers", "adamw", "--scenarios", "schedule", "--seeds", "1",
         "--steps", "3", "--no-overhead", "--no-progress", "--out", "brain")
BENCH = ("bench", "--device", "cpu", "--quick", "--cases", "matrix", "--sizes", "16", "--dtypes", "fp32",
         "--threads", "1", "--budget", "0.01", "--no-progress", "--out", "out")


@dataclass(frozen=True)
class Probe:
    area: str
    name: str
    argv: tuple[str, ...] = ()     # a fusedgate command line, or ("-m", module, ...)
    code: str | None = None        # or Python code (run by bad_inputs.API_RUNNER)
    expect: str = "error"          # "error": a clean one-line error; "ok": exit 0 and the behaviour below
    output: str | None = None      # ok: a text the output must contain
    creates: str | None = None     # ok: a file the probe's folder must hold afterwards
    codes: tuple[int, ...] = (2,)  # the exit codes of a clean error
    owner: str = ""                # where the fix belongs, when not in the CLI

    def substituted(self, names: dict[str, str]) -> Probe:
        sub = lambda text: Template(text).safe_substitute(names)
        code = None if self.code is None else sub(self.code)
        return Probe(self.area, self.name, tuple(sub(a) for a in self.argv), code, self.expect, self.output,
                     self.creates, self.codes, self.owner)

    def behaves(self, text: str, cwd: Path) -> bool:
        return ((self.output is None or self.output in text)
                and (self.creates is None or (cwd / self.creates).exists()))


def cli(area: str, name: str, *argv: str, **kw) -> Probe:
    return Probe(area, name, argv=tuple(argv), **kw)


def api(area: str, name: str, code: str, **kw) -> Probe:
    return Probe(area, name, code=code, **kw)


SPECIAL = [("a FIFO", "$fifo"), ("a link to a FIFO", "$fifo_link"), ("/dev/zero", "$zero"),
           ("/dev/urandom", "$urandom"), ("a folder", "$folder"), ("a missing file", "$missing"),
           ("a dangling link", "$dangling"),
           ("a symlink loop", "$loop"), ("a 300 GiB sparse file", "$huge")]
BAD_TEXT = [("an empty file", "$empty"), ("2 MiB of spaces", "$big"), ("a binary file", "$binary"),
            ("latin-1 text", "$latin1"), ("UTF-16 text", "$utf16"), ("JSON nested 200,000 deep", "$deep"),
            ("/dev/null", "$null")]
BAD_SPECS = ["spec_nan", "spec_neg_lr", "spec_inf", "spec_bool_ns", "spec_huge_ns", "spec_unknown", "spec_float_ns",
             "spec_bad_pole", "spec_array", "spec_version", "spec_bool_version"]


def spec_probes() -> list[Probe]:
    out = [cli("spec", f"validate {what}", "spec", "validate", path, codes=(1,)) for what, path in SPECIAL + BAD_TEXT]
    out += [cli("spec", f"show {name}", "spec", "show", f"${name}") for name in BAD_SPECS]
    out += [cli("spec", "show bogus (not a file, not a preset)", "spec", "show", "bogus"),
            cli("spec", "show a FIFO", "spec", "show", "$fifo"),
            cli("spec", "no file", "spec", "validate"),
            cli("spec", "show default", "spec", "show", "default", expect="ok", output='"version"')]
    return out


def train_probes() -> list[Probe]:
    out = [cli("train", f"--spec {what}", *TRAIN, "--spec", path) for what, path in SPECIAL[:5] + BAD_TEXT[:4]]
    out += [cli("train", f"--data {what}", *TRAIN, "--data", path) for what, path in SPECIAL if what != "a folder"]
    out += [cli("train", f"--data {what}", *TRAIN, "--data", path) for what, path in (BAD_TEXT[0], BAD_TEXT[2])]
    out.append(cli("train", "--data 2 MiB of spaces (text)", *TRAIN, "--data", "$big", expect="ok",
                   output="final val bpb"))
    out += [cli("train", f"--resume {what}", "train", "--resume", path, "--no-progress") for what, path in SPECIAL]
    out += [cli("train", f"--resume {name}", "train", "--resume", f"${name}", "--no-progress")
            for name in ("ckpt_truncated", "ckpt_raw", "ckpt_evil", "ckpt_foreign", "ckpt_negstep", "ckpt_boolsteps",
                         "ckpt_nokeys", "ckpt_hugestep", "binary", "empty")]
    out += [cli("train", "--resume a checkpoint with wrong shapes", "train", "--resume", "$ckpt_shapes", "--steps", "4",
                "--no-progress", "--out", "resumed"),
            cli("train", "--resume a run folder whose checkpoint.pt is a FIFO", "train", "--resume", "$fifo_run",
                "--no-progress"),
            cli("train", "--resume a run folder whose metrics.jsonl is a FIFO", "train", "--resume",
                "$fifo_metrics_run", "--steps", "3", "--no-progress")]
    numbers = [("--steps", "-1"), ("--steps", "0"), ("--steps", "1e9"), ("--steps", "99999999999"), ("--steps", "nan"),
               ("--steps", "True"), ("--steps", "9" * 5000), ("--seed", "-1"), ("--seed", "1.5"),
               ("--lr-scale", "nan"), ("--lr-scale", "inf"), ("--lr-scale", "-1"), ("--lr-scale", "0"),
               ("--lr-scale", "1e300"), ("--threads", "0"), ("--threads", "100000"), ("--nproc", "0"),
               ("--nproc", "5000"), ("--eval-every", "0"), ("--checkpoint-every", "-1"), ("--gate-log-every", "0"),
               ("--preset", "bogus"), ("--optimizer", "bogus"), ("--device", "bogus"), ("--device", "cuda:99"),
               ("--tokenizer", "bpe:-5"), ("--tokenizer", "bpe:99999999999"), ("--tokenizer", "bpe:abc"),
               ("--compare", "bogus"), ("--compare", ",")]
    out += [cli("train", f"{flag} {value[:20]}", *TRAIN, flag, value) for flag, value in numbers]
    out += [cli("train", "--compare fusedgate:A_FIFO", *TRAIN, "--compare", "baseline,fusedgate:$fifo"),
            cli("train", "--compare fusedgate:/dev/zero", *TRAIN, "--compare", "fusedgate:$zero"),
            cli("train", "--out a read-only location", *TRAIN[:-1], "$read_only"),
            cli("train", "--out an existing file", *TRAIN[:-1], "$empty"),
            cli("train", "--data latin-1 text (bytes are fine)", *TRAIN, "--data", "$latin1_corpus", expect="ok",
                output="final val bpb"),
            cli("train", "--data a folder holding a FIFO and a binary file", *TRAIN, "--data", "$corpus_with_fifo",
                expect="ok", output="final val bpb"),
            cli("train", "--resume a good checkpoint, longer", "train", "--resume", "$run", "--steps", "3",
                "--no-progress", "--out", "resumed", expect="ok", output="over the whole run")]
    return out


def search_probes() -> list[Probe]:
    out = [cli("search", f"run --init {what}", *SEARCH_RUN, "--init", path)
           for what, path in SPECIAL[:5] + BAD_TEXT[:4]]
    out += [cli("search", f"resume --db {what}", "search", "resume", "--db", path) for what, path in SPECIAL[:6]]
    out += [cli("search", f"report --db {name}", "search", "report", "--db", f"${name}", "--out", "rep")
            for name in ("archive_corrupt", "archive_truncated", "archive_text", "archive_nometa", "binary", "zero")]
    out += [cli("search", "run --reuse a FIFO", *SEARCH_RUN, "--reuse", "$fifo"),
            cli("search", "run --reuse a damaged archive", *SEARCH_RUN, "--reuse", "$archive_corrupt"),
            cli("search", "report --out an existing file", "search", "report", "--db", "$archive_ok", "--out",
                "$empty"),
            cli("search", "report --out a read-only location", "search", "report", "--db", "$archive_ok", "--out",
                "$read_only"),
            cli("search", "report of the committed archive", "search", "report", "--db", "$archive_ok", "--out", "rep",
                expect="ok", creates="rep/report.md"),
            cli("search", "resume a stored mutator command", "search", "resume", "--db", "$archive_mutator",
                "--workers", "1"),
            cli("search", "resume population=-3, generations=1e9 stored", "search", "resume", "--db",
                "$archive_badconfig", "--workers", "1", "--no-progress", owner=LEAD)]
    numbers = [("--seeds", "0-1000000000"), ("--seeds", "5-2"), ("--seeds", "-3"), ("--seeds", "0,0"),
               ("--screen-seeds", "0-99999"), ("--transfer-seeds", "x"), ("--min-effect", "nan"),
               ("--min-effect", "inf"), ("--min-effect", "-1"), ("--population", "-3"), ("--population", "0"),
               ("--population", "10000000"), ("--generations", "1e9"), ("--generations", "0"),
               ("--survivors", "0"), ("--survivors", "7"), ("--screen-steps", "0"), ("--horizons", "0"),
               ("--transfer-steps", "0"), ("--final-eval-tokens", "0"), ("--lr-scales", "1,nan"),
               ("--ladder", "0.8,0.9"),
               ("--lr-scales", "0"), ("--lr-scales", ","), ("--mutator-timeout", "inf"), ("--mutator-retries", "-1"),
               ("--workers", "0"), ("--workers", "100000"), ("--jobs-per-gpu", "0"), ("--connect-timeout", "nan"),
               ("--gpus-per-job", "-1"), ("--cpus-per-job", "0"), ("--seed", "-1"), ("--operators", "bogus"),
               ("--mutator-cmd", "'unclosed"), ("--preset", "bogus")]
    out += [cli("search", f"run {flag} {value}", *SEARCH_RUN, flag, value) for flag, value in numbers]
    out += [cli("search", "noise --horizons 0", "search", "noise", "--preset", "test", "--db", "n.sqlite",
                "--horizons", "0"),
            cli("search", "noise --seeds 0", "search", "noise", "--preset", "test", "--db", "n.sqlite", "--seeds", "0"),
            cli("search", "noise --second-lr-scale nan", "search", "noise", "--db", "n.sqlite", "--second-lr-scale",
                "nan"),
            cli("search", "noise --out an existing file", "search", "noise", "--preset", "test", "--db", "n.sqlite",
                "--out", "$empty"),
            cli("search", "calibrate --n 1", "search", "calibrate", "--db", "c.sqlite", "--n", "1"),
            cli("search", "calibrate --n 1e9", "search", "calibrate", "--db", "c.sqlite", "--n", "1000000000"),
            cli("search", "calibrate --out a read-only location", "search", "calibrate", "--preset", "test", "--db",
                "c.sqlite", "--out", "$read_only")]
    return out


def brain_probes() -> list[Probe]:
    out = [cli("brain-eval", f"--init {what}", *BRAIN, "--init", path) for what, path in SPECIAL + BAD_TEXT[:5]]
    out += [cli("brain-eval", f"--init {name}", *BRAIN, "--init", f"${name}")
            for name in ("init_nan", "init_bool", "init_list", "init_unknown", "init_neg")]
    out.append(cli("brain-eval", "--init init_huge (warmup_windows=1e50)", *BRAIN, "--init", "$init_huge",
                   owner="OptBrain (constructor ranges)"))
    numbers = [("--seeds", "0"), ("--seeds", "-1"), ("--seeds", "1e9"), ("--seeds", "nan"), ("--steps", "0"),
               ("--window", "2"), ("--threads", "0"), ("--tasks", "bogus"), ("--scenarios", "bogus"),
               ("--optimizers", ",")]
    out += [cli("brain-eval", f"{flag} {value}", *BRAIN, flag, value) for flag, value in numbers]
    out += [cli("brain-eval", "--out an existing file", *BRAIN[:-1], "$empty"),
            cli("brain-eval", "--out a read-only location", *BRAIN[:-1], "$read_only"),
            cli("brain-eval", "--init a good file", *BRAIN, "--init", "$init_ok", expect="ok",
                creates="brain/brain_eval.md")]
    load = "from fusedgate.brain import OptBrain\nOptBrain(None, n_groups=1).load({path!r})"
    for name in ("brain_mu_inf", "brain_rng_zero", "brain_steps_neg", "brain_total_neg", "brain_cycle"):
        out.append(api("OptBrain", f"load {name}.npz", load.format(path=f"${name}"), owner=OPTBRAIN))
    for what, path in (("a pickled object array", "$brain_pickle"), ("a truncated .npz", "$brain_truncated"),
                       ("/dev/zero", "$zero"), ("a folder", "$folder"), ("a FIFO", "$fifo")):
        out.append(api("OptBrain", f"load {what}", load.format(path=path), owner=OPTBRAIN))
    for kwargs in ("window=0", "explore=float('nan')", "seed=True", "sketch_size=10**9", "policy_lr=-1"):
        out.append(api("OptBrain", f"OptBrain({kwargs})", f"from fusedgate.brain import OptBrain\n"
                                                          f"OptBrain(None, n_groups=1, {kwargs})"))
    return out


def bench_probes() -> list[Probe]:
    out = [cli("bench", f"--rerender {what}", "bench", "--rerender", path) for what, path in SPECIAL + BAD_TEXT[:4]]
    out += [cli("bench", f"--rerender {name}", "bench", "--rerender", f"${name}")
            for name in ("results_truncated", "results_array", "results_empty_object", "results_wrong_type")]
    numbers = [("--sizes", "0"), ("--sizes", "-5"), ("--sizes", "9999999"), ("--sizes", "nan"), ("--depths", "0"),
               ("--budget", "nan"), ("--budget", "inf"), ("--budget", "-1"), ("--budget", "1e9"), ("--threads", "0"),
               ("--device", "bogus"), ("--cases", "bogus"), ("--dtypes", "fp64"), ("--contestants", "bogus")]
    out += [cli("bench", f"{flag} {value}", *BENCH, flag, value) for flag, value in numbers]
    out += [cli("bench", "--out an existing file", *BENCH[:-1], "$empty"),
            cli("bench", "--rerender the committed cpu.json", "bench", "--rerender", "$results_ok", expect="ok",
                output="wrote"),
            cli("compile_check", "architecture 'sm90'", "-m", "fusedgate.kernels.compile_check", "sm90"),
            cli("cpu_step", "--depth 0", "-m", "fusedgate.bench.cpu_step", "--depth", "0"),
            cli("cpu_step", "--weight-decay nan", "-m", "fusedgate.bench.cpu_step", "--weight-decay", "nan"),
            cli("cpu_step", "--specs a FIFO", "-m", "fusedgate.bench.cpu_step", "--specs", "$fifo", "--blocks", "1"),
            cli("distributed_bytes", "--worlds 0", "-m", "fusedgate.bench.distributed_bytes", "--worlds", "0")]
    return out


def api_probes() -> list[Probe]:
    make = ("import torch\nfrom fusedgate import FusedGate, GateSpec\np = torch.nn.Parameter(torch.ones(4, 4))\n")
    step = "\np.grad = torch.ones(4, 4)\nopt.step()\nassert torch.isfinite(p).all(), 'parameters became NaN'"
    muon, adamw = "kind='muon', beta2=0.95", "kind='adamw'"
    groups = [(muon, "lr=-1.0"), (muon, "lr=float('nan')"), (muon, "ns_steps=0"), (muon, "ns_steps=-3"),
              (muon, "momentum=1.5"), (adamw, "lr=-1.0"), (adamw, "eps=0.0"), (adamw, "betas=(1.0, 0.9)"),
              (adamw, "weight_decay=float('nan')")]
    out = [api("FusedGate", f"param group {kind.split(',')[0]} {kw}", make
               + f"opt = FusedGate([dict(params=[p], {kind}, {kw})])" + step, owner=OPTIMIZER) for kind, kw in groups]
    out += [api("FusedGate", "total_steps=True", make + "FusedGate([p], total_steps=True)", owner=OPTIMIZER),
            api("FusedGate", "total_steps=1e30", make + "FusedGate([p], total_steps=10**30)", owner=OPTIMIZER),
            api("FusedGate", "a complex loss", make + "opt = FusedGate([p])\np.grad = torch.ones(4, 4)\n"
                "opt.step(loss=torch.tensor(1 + 2j))", owner=OPTIMIZER),
            api("FusedGate", "spec='default' (a string)", make + "FusedGate([p], spec='default')"),
            api("FusedGate", "backend='cuda-magic'", make + "FusedGate([p], backend='cuda-magic')")]
    spec = "from fusedgate import GateSpec\n"
    out += [api("GateSpec", f"load {what}", spec + f"GateSpec.load({path!r})") for what, path in SPECIAL + BAD_TEXT]
    out += [api("GateSpec", "lr=nan", spec + "GateSpec.gated().replace(lr=float('nan'))"),
            api("GateSpec", "ns_steps=True", spec + "GateSpec.from_dict({'version': 2, 'ns_steps': True})"),
            api("GateSpec", "from_json of 200,000 brackets", spec + "GateSpec.from_json('[' * 200000)"),
            api("GateSpec", "from_dict of a list", spec + "GateSpec.from_dict([1, 2])")]
    train = "from fusedgate.nanochat.train import TrainConfig, train\n"
    out += [api("TrainConfig", f"train({kw})", train + f"train(TrainConfig(preset='test', progress=False, {kw}))")
            for kw in ("steps=True", "seed=-1", "lr_scale=float('nan')", "steps=10**30", "eval_every=0",
                       "data='$fifo'", "resume='$fifo'", "spec='default'")]
    out += [api("checkpoint", f"load_checkpoint({what})", "from fusedgate.nanochat.checkpoint import load_checkpoint\n"
                f"load_checkpoint({path!r})") for what, path in (("a FIFO", "$fifo"), ("/dev/zero", "$zero"),
                                                                   ("a raw pickle", "$ckpt_raw"))]
    out += [api("Archive", f"open {what}", "from fusedgate.search.archive import Archive\n"
                f"Archive.open({path!r})") for what, path in (("a FIFO", "$fifo"), ("/dev/zero", "$zero"),
                                                               ("a damaged file", "$archive_corrupt"))]
    return out


def all_probes() -> list[Probe]:
    return spec_probes() + train_probes() + search_probes() + brain_probes() + bench_probes() + api_probes()
