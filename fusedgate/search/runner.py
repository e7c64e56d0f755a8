"""Running jobs into an archive: the corpus check and the job loop every archive mode shares (the
search, the noise floor, the calibration)."""

from __future__ import annotations

import os
import subprocess

from tqdm import tqdm

from fusedgate.search.evaluate import corpus_fingerprint


def check_corpus(archive, data: str | None, preset: str) -> str:
    """The corpus fingerprint; an archive refuses to continue on a different corpus."""
    corpus = corpus_fingerprint(data, preset)
    stored = archive.get_meta("corpus")
    if stored is None:
        archive.set_meta("corpus", corpus)
    elif stored != corpus:
        raise RuntimeError(
            f"the corpus changed since this search started ({stored} -> {corpus}); "
            f"its results would not be comparable, start a new archive"
        )
    return corpus


def run_jobs(archive, executor, jobs: list[dict], desc: str, log=print, progress: bool = True) -> None:
    """Run the jobs the archive lacks (each once, in the order given), recording each as it finishes."""
    todo, seen = [], set()
    for job in jobs:
        if job["job_key"] not in seen and archive.evaluation(job["job_key"]) is None:
            seen.add(job["job_key"])
            todo.append(job)
    if not todo:
        return
    bar = tqdm(total=len(todo), desc=desc, disable=not progress)
    for job, result in executor.map(todo, on_start=lambda j: archive.record_start(j["job_key"])):
        archive.add_evaluation(job, result)
        if result["status"] != "ok":
            what = job["optimizer"] if job["spec_hash"] is None else f"spec {job['spec_hash']}"
            first = (result.get("error") or "").splitlines()
            log(f"  {what} seed {job['seed']} {job['steps']} steps: {result['status']}: {first[0] if first else ''}")
        bar.update(1)
    bar.close()


def code_commit() -> str:
    """The git commit of the fusedgate checkout that runs the jobs ("+dirty" with uncommitted changes), or
    the package version when it is not a git checkout."""
    import fusedgate

    root = os.path.dirname(os.path.dirname(os.path.abspath(fusedgate.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return f"fusedgate {fusedgate.__version__}"
    if head.returncode != 0:
        return f"fusedgate {fusedgate.__version__}"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
