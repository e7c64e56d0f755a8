"""The search's configuration: one frozen dataclass, one validator, used by the CLI and by every resume.

A search archive stores ``SearchConfig.to_dict()``; ``SearchConfig.from_dict`` validates a stored
config exactly as the CLI's values are validated (types, bounds, known presets and operators, spec
texts), so an archive edited to say ``population=-3`` or ``generations=1e9`` is refused, with the
field and its bound, before a resume runs anything.

The stages it configures (see ``fusedgate.search.tournament``):

    screen     every candidate, ``screen_steps`` on ``screen_seeds``: prunes to ``survivors``
    confirm    the survivors at every horizon of ``horizons`` on ``confirm_seeds``; the reference is
               swept over ``lr_scales`` there (the tuned reference), and a winner is re-run at the
               other lr scales of ``lr_scales`` at the first horizon (robustness)
    transfer   confirmed winners on ``transfer_preset`` for ``transfer_steps`` on ``transfer_seeds``
    holdout    the winners (or else the best candidate) on ``holdout_seeds`` at every horizon, with the
               reference's steps-to-target ladder (``ladder`` ratios)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

MAX_SEEDS = 256          # seeds per stage
MAX_SEED = 2**31 - 1
MAX_STEPS = 1_000_000
MAX_COUNT = 1000         # generations, population
MAX_EVAL_TOKENS = 1 << 30


class ConfigError(ValueError):
    """A search configuration value out of its bounds (one line naming the field)."""


def _default_init_specs() -> tuple[str, ...]:
    from fusedgate.search.tournament import seed_specs

    return tuple(s.to_json(indent=None) for s in seed_specs())


def _default_operators() -> tuple[str, ...]:
    from fusedgate.search.tournament import DEFAULT_OPERATORS

    return tuple(DEFAULT_OPERATORS)


@dataclass(frozen=True)
class SearchConfig:
    preset: str = "tiny"
    data: str | None = None
    generations: int = 3
    population: int = 6
    survivors: int = 2
    screen_steps: int = 100
    screen_seeds: tuple[int, ...] = (0, 1)
    horizons: tuple[int, ...] = (300, 600)
    confirm_seeds: tuple[int, ...] = tuple(range(10, 18))
    lr_scales: tuple[float, ...] = (0.7, 1.0, 1.4)
    transfer_preset: str = "tiny-d4"
    transfer_steps: int | None = None        # None: the first horizon
    transfer_seeds: tuple[int, ...] = tuple(range(50, 58))
    holdout_seeds: tuple[int, ...] = tuple(range(30, 38))
    ladder: tuple[float, ...] = (0.8, 0.9, 1.0, 1.15)
    final_eval_tokens: int | None = None     # None: the preset's (small) eval set
    min_effect: float | None = None          # None: from the noise floor
    seed: int = 0
    init_specs: tuple[str, ...] = field(default_factory=_default_init_specs)
    operators: tuple[str, ...] = field(default_factory=_default_operators)
    mutator_cmd: str | tuple[str, ...] | None = None   # a command line (the CLI's) or an argument list
    mutator_timeout: float = 300.0
    mutator_retries: int = 2

    def __post_init__(self):
        for name in ("screen_seeds", "horizons", "confirm_seeds", "lr_scales", "transfer_seeds", "holdout_seeds",
                     "ladder", "init_specs", "operators", "mutator_cmd"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Every field against its bound; ConfigError naming the first offender."""
        from fusedgate.nanochat.presets import PRESETS
        from fusedgate.search.mutations import OPERATORS
        from fusedgate.search.steps_to_target import rungs
        from fusedgate.spec import GateSpec, SpecError

        for name in ("preset", "transfer_preset"):
            if getattr(self, name) not in PRESETS:
                raise ConfigError(f"{name}: unknown preset {getattr(self, name)!r}; choose one of {', '.join(PRESETS)}")
        _int("generations", self.generations, 1, MAX_COUNT)
        _int("population", self.population, 1, MAX_COUNT)
        _int("survivors", self.survivors, 1, self.population)
        _int("screen_steps", self.screen_steps, 1, MAX_STEPS)
        if self.transfer_steps is not None:
            _int("transfer_steps", self.transfer_steps, 1, MAX_STEPS)
        _ints("horizons", self.horizons, 1, MAX_STEPS, max_len=8)
        for name in ("screen_seeds", "confirm_seeds", "transfer_seeds", "holdout_seeds"):
            _ints(name, getattr(self, name), 0, MAX_SEED, max_len=MAX_SEEDS)
        _floats("lr_scales", self.lr_scales, 1e-3, 100.0)
        if 1.0 not in self.lr_scales:
            raise ConfigError(f"lr_scales={list(self.lr_scales)} must include 1 (the candidates' own lr)")
        _floats("ladder", self.ladder, 0.1, 10.0)
        if 1.0 not in self.ladder:
            raise ConfigError(f"ladder={list(self.ladder)} must include 1 (the candidate's own horizon)")
        rungs(self.horizons[0], self.ladder)
        if self.final_eval_tokens is not None:
            _int("final_eval_tokens", self.final_eval_tokens, 1, MAX_EVAL_TOKENS)
        if self.min_effect is not None:
            _float("min_effect", self.min_effect, 0.0, 10.0)
        _int("seed", self.seed, 0, MAX_SEED)
        _float("mutator_timeout", self.mutator_timeout, 1e-3, 86400.0)
        _int("mutator_retries", self.mutator_retries, 0, 100)
        unknown = [op for op in self.operators if op not in OPERATORS]
        if unknown:
            raise ConfigError(f"unknown operator(s) {', '.join(map(str, unknown))}; known: {', '.join(OPERATORS)}")
        if self.data is not None and not isinstance(self.data, str):
            raise ConfigError(f"data={self.data!r}: expected a path or None")
        cmd = self.mutator_cmd
        if cmd is not None and not isinstance(cmd, str) and not (
                isinstance(cmd, tuple) and cmd and all(isinstance(a, str) for a in cmd)):
            raise ConfigError(f"mutator_cmd={cmd!r}: expected a command line, an argument list or None")
        for i, text in enumerate(self.init_specs):
            try:
                GateSpec.from_json(text)
            except (SpecError, TypeError) as exc:
                raise ConfigError(f"init_specs[{i}]: {exc}") from None

    # ------------------------------------------------------------------ derived
    @property
    def first_horizon(self) -> int:
        return self.horizons[0]

    @property
    def transfer_horizon(self) -> int:
        return self.transfer_steps or self.horizons[0]

    def replace(self, **changes) -> SearchConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, stored) -> SearchConfig:
        """A stored config (an archive's), validated like the CLI's; ConfigError for anything else."""
        if not isinstance(stored, dict):
            raise ConfigError(f"a search config is a JSON object, got {type(stored).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(stored) - names)
        if unknown:
            raise ConfigError(f"unknown search config field(s) {', '.join(unknown)} (an archive from another "
                              f"fusedgate version? start a new archive)")
        try:
            return cls(**stored)
        except TypeError as exc:
            raise ConfigError(f"search config: {exc}") from None


def _int(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r}: expected an integer in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value}: must be in [{lo}, {hi}]")


def _float(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r}: expected a finite number in [{lo:g}, {hi:g}]")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r}: must be in [{lo:g}, {hi:g}]")


def _ints(name: str, values, lo: int, hi: int, max_len: int) -> None:
    if not isinstance(values, tuple) or not values:
        raise ConfigError(f"{name}: expected a non-empty list of integers")
    if len(values) > max_len:
        raise ConfigError(f"{name}: {len(values)} values, at most {max_len}")
    for v in values:
        _int(name, v, lo, hi)
    if len(set(values)) != len(values):
        raise ConfigError(f"{name}={list(values)}: repeated values")


def _floats(name: str, values, lo: float, hi: float) -> None:
    if not isinstance(values, tuple) or not values or len(values) > 16:
        raise ConfigError(f"{name}: expected 1 to 16 numbers")
    for v in values:
        _float(name, v, lo, hi)
    if len(set(values)) != len(values):
        raise ConfigError(f"{name}={list(values)}: repeated values")
