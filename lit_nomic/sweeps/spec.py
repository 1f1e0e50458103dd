"""Sweep files: a base experiment, named variants, a grid and seeds, expanded into concrete runs.

A sweep YAML is a small separate config that expands into ``lit-nomic fit`` argument lists (the
advice of jsonargparse's author: keep the sweep spec apart and stack overrides onto the training
config). Every override is a dotted LightningCLI key. Keys are checked when the sweep is planned,
not hours later on a cluster: an unknown key fails with its name and the sweep file.

Run identity is ``<variant>[_<axis>-<value>...]_s<seed>_<hash6>``: readable overrides plus a short
hash of the run's configuration (the base YAML with every override applied), so that a changed
base experiment or override gives a new run instead of silently reusing an old result.

Override layering, later wins: base YAML < ``overrides`` < variant < grid/zip point < seed keys.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SWEEP_KEYS = {
    "name": "the sweep's name (records under results/sweeps/<name>, runs under runs/sweeps/<name>)",
    "title": "what was swept, in words (used as the table and plot title)",
    "description": "free text",
    "base": "the base experiment YAML, relative to the sweep file",
    "seeds": "list of seeds; each is written to every key of seed_keys",
    "seed_keys": "dotted keys that receive the seed (default: seed_everything, data.seed)",
    "overrides": "dotted key -> value, applied to every run",
    "variants": "name -> {dotted key: value}: named sets of overrides",
    "grid": "dotted key -> list of values: their cartesian product, crossed with the variants",
    "zip": "dotted key -> list of values of equal length: walked together, crossed with the rest",
    "baseline": "the variant significance is measured against",
    "eval": "the evaluation after each run: data (suite YAML or name) and extra lit-nomic eval args",
    "table": "metric per task type, datasets to show, primary dataset of the plot",
    "slurm": "SLURM defaults: nodes, gpus_per_node, partition, time_min, account, qos, cpus_per_task, mem_gb",
    "profiles": "name -> top-level keys replaced (overrides merged) when planned with --profile NAME",
}
EVAL_KEYS = {"data", "split", "args"}
TABLE_KEYS = {"metric", "datasets", "primary", "include", "pairs"}
INCLUDE_KEYS = {"sweep", "variant", "label"}
SLURM_KEYS = {
    "nodes",
    "gpus_per_node",
    "partition",
    "time_min",
    "account",
    "qos",
    "cpus_per_task",
    "mem_gb",
    "constraint",
}
DEFAULT_SEED_KEYS = ("seed_everything", "data.seed")
# The training CLI keys that hold a ModelSpec's free-form overrides dict: their sub-keys are
# EncoderConfig fields, which the LightningCLI parser cannot check (the dict is typed Any).
ENCODER_OVERRIDES_KEY = "model.model.overrides"


class SweepError(ValueError):
    """A sweep file is wrong; the message names the file and the key."""


@dataclass
class RunSpec:
    """One concrete training run of a sweep."""

    name: str
    variant: str
    point: dict[str, Any]  # grid/zip values of this run (dotted key -> value)
    seed: int
    overrides: dict[str, Any]  # every override on top of the base YAML, in layering order
    config_hash: str

    @property
    def group(self) -> str:
        """The row of the aggregated table: the run name without seed and hash."""
        return group_name(self.variant, self.point)


@dataclass
class SweepSpec:
    name: str
    path: Path
    base: Path
    title: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    seed_keys: list[str] = field(default_factory=lambda: list(DEFAULT_SEED_KEYS))
    overrides: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"base": {}})
    grid: dict[str, list[Any]] = field(default_factory=dict)
    zip: dict[str, list[Any]] = field(default_factory=dict)
    baseline: str | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None

    @property
    def eval_data(self) -> str | None:
        """The ``--data`` of ``lit-nomic eval``: a suite YAML (resolved against the sweep file) or a name."""
        data = self.eval.get("data")
        if data is None:
            return None
        candidate = (self.path.parent / str(data)).resolve()
        return str(candidate) if candidate.exists() else str(data)

    def runs(self) -> list[RunSpec]:
        """Every run, in a stable order: variant, then grid/zip point, then seed."""
        base_config = _load_yaml(self.base)
        out: list[RunSpec] = []
        for variant, variant_overrides in self.variants.items():
            for point in self._points():
                for seed in self.seeds:
                    overrides = {**self.overrides, **variant_overrides, **point}
                    overrides.update({key: seed for key in self.seed_keys})
                    resolved = apply_overrides(base_config, overrides, self.path)
                    digest = config_hash(resolved)
                    name = f"{group_name(variant, point)}_s{seed}_{digest[:6]}"
                    out.append(RunSpec(name, variant, point, seed, overrides, digest))
        return out

    def _points(self) -> list[dict[str, Any]]:
        grid_points = [
            dict(zip(self.grid, values, strict=False)) for values in itertools.product(*self.grid.values())
        ]
        zip_points = [
            dict(zip(self.zip, values, strict=False)) for values in zip(*self.zip.values(), strict=False)
        ] or [{}]
        return [{**g, **z} for g in grid_points for z in zip_points]


def group_name(variant: str, point: dict[str, Any]) -> str:
    parts = [variant] + [f"{key.rsplit('.', 1)[-1]}-{_slug(value)}" for key, value in point.items()]
    return "_".join(parts)


def _slug(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "", text) or "x"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a run's configuration (base YAML + overrides)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], where: Path) -> dict[str, Any]:
    """``config`` with each dotted key set (a dict value replaces the whole sub-tree, as on the CLI)."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SweepError(f"{where}: override {key!r}: {part!r} is not a mapping in the base config")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return out


def load_sweep(path: str | Path, profile: str | None = None) -> SweepSpec:
    """Read and check a sweep file (structure only; :func:`check_keys` checks the training keys)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    raw = _load_yaml(path)
    _check_known(raw, SWEEP_KEYS, path, "")
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            raise SweepError(f"{path}: no profile {profile!r} (profiles: {', '.join(profiles) or 'none'})")
        chosen = profiles[profile] or {}
        _check_known(
            chosen, {k: v for k, v in SWEEP_KEYS.items() if k != "profiles"}, path, f"profiles.{profile}."
        )
        merged_overrides = {**(raw.get("overrides") or {}), **(chosen.get("overrides") or {})}
        raw = {**raw, **chosen, "overrides": merged_overrides}
    for key in ("name", "base"):
        if not raw.get(key):
            raise SweepError(f"{path}: missing required key {key!r}")
    name = str(raw["name"])
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SweepError(f"{path}: name {name!r} must be letters, digits, '.', '_' or '-'")
    base = (path.parent / str(raw["base"])).resolve()
    if not base.is_file():
        raise SweepError(f"{path}: base {raw['base']!r} does not exist (resolved against the sweep file)")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SweepError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{path}: seeds repeat: {seeds!r}")
    variants = raw.get("variants") or {"base": {}}
    if not isinstance(variants, dict):
        raise SweepError(f"{path}: variants must map names to override mappings")
    for vname, vover in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9.+-]+", str(vname)):
            raise SweepError(f"{path}: variant name {vname!r} must be letters, digits, '.', '+' or '-'")
        if vover is not None and not isinstance(vover, dict):
            raise SweepError(f"{path}: variants.{vname} must be a mapping of dotted keys")
    variants = {str(k): dict(v or {}) for k, v in variants.items()}
    grid = _lists(raw.get("grid") or {}, path, "grid")
    zipped = _lists(raw.get("zip") or {}, path, "zip")
    if len({len(v) for v in zipped.values()}) > 1:
        raise SweepError(f"{path}: zip lists differ in length: { ({k: len(v) for k, v in zipped.items()}) }")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in variants:
        raise SweepError(f"{path}: baseline {baseline!r} is not a variant ({', '.join(variants)})")
    for section, known in (("eval", EVAL_KEYS), ("table", TABLE_KEYS), ("slurm", SLURM_KEYS)):
        _check_known(raw.get(section) or {}, dict.fromkeys(known, ""), path, f"{section}.")
    includes = (raw.get("table") or {}).get("include") or []
    for i, entry in enumerate(includes):
        _check_include(entry, path, i, variants)
    names = set(variants) | {str(e.get("label") or e["variant"]) for e in includes}
    for i, pair in enumerate((raw.get("table") or {}).get("pairs") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1]):
            raise SweepError(f"{path}: table.pairs[{i}] must be two different variant names, got {pair!r}")
        for member in pair:
            if member not in names:
                raise SweepError(
                    f"{path}: table.pairs[{i}]: {member!r} is not a variant or include label ({', '.join(sorted(names))})"
                )
    seed_keys = list(raw.get("seed_keys") or DEFAULT_SEED_KEYS)
    return SweepSpec(
        name=name,
        path=path,
        base=base,
        title=str(raw.get("title") or name),
        seeds=seeds,
        seed_keys=seed_keys,
        overrides=dict(raw.get("overrides") or {}),
        variants=variants,
        grid=grid,
        zip=zipped,
        baseline=baseline,
        eval=dict(raw.get("eval") or {}),
        table=dict(raw.get("table") or {}),
        slurm=dict(raw.get("slurm") or {}),
        profile=profile,
    )


def _check_include(entry: Any, path: Path, i: int, variants: dict[str, Any]) -> None:
    """``table.include`` rows come from another sweep's records: the file, one of its variants, a label."""
    where = f"table.include[{i}]"
    _check_known(entry, dict.fromkeys(INCLUDE_KEYS, ""), path, f"{where}.")
    for key in ("sweep", "variant"):
        if not entry.get(key):
            raise SweepError(f"{path}: {where} needs {key!r}")
    other = path.parent / str(entry["sweep"])
    if not other.is_file():
        raise SweepError(
            f"{path}: {where}.sweep {entry['sweep']!r} does not exist (resolved against the sweep file)"
        )
    label = str(entry.get("label") or entry["variant"])
    if label in variants:
        raise SweepError(
            f"{path}: {where} label {label!r} is also a variant of this sweep; give it another label"
        )


def included(sweep: SweepSpec) -> list[tuple[str, SweepSpec, str]]:
    """The (label, other sweep, variant) of each ``table.include`` entry, its sweep file loaded."""
    out = []
    for entry in sweep.table.get("include") or []:
        other = load_sweep(sweep.path.parent / str(entry["sweep"]))
        if entry["variant"] not in other.variants:
            raise SweepError(
                f"{sweep.path}: table.include variant {entry['variant']!r} is not a variant of {other.path.name} "
                f"({', '.join(other.variants)})"
            )
        out.append((str(entry.get("label") or entry["variant"]), other, str(entry["variant"])))
    return out


def _lists(section: Any, path: Path, name: str) -> dict[str, list[Any]]:
    if not isinstance(section, dict):
        raise SweepError(f"{path}: {name} must map dotted keys to lists of values")
    for key, values in section.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: {name}.{key} must be a non-empty list, got {values!r}")
    return {str(k): list(v) for k, v in section.items()}


def _check_known(section: Any, known: dict[str, str], path: Path, prefix: str) -> None:
    if not isinstance(section, dict):
        raise SweepError(f"{path}: {prefix.rstrip('.') or 'the file'} must be a mapping")
    for key in section:
        if key not in known:
            raise SweepError(f"{path}: unknown key {prefix}{key!r}; known: {', '.join(sorted(known))}")


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping at the top level")
    return data


def cli_value(value: Any) -> str:
    """A value as one LightningCLI argument: JSON, which jsonargparse parses back exactly."""
    return value if isinstance(value, str) else json.dumps(value)


def fit_args(sweep: SweepSpec, run: RunSpec, run_dir: Path) -> list[str]:
    """The ``lit-nomic fit`` arguments of ``run`` (without the command name)."""
    args = ["--config", str(sweep.base)]
    args += [f"--{key}={cli_value(value)}" for key, value in run.overrides.items()]
    args.append(f"--trainer.default_root_dir={run_dir}")
    return args


def check_keys(sweep: SweepSpec, runs: list[RunSpec] | None = None) -> None:
    """Parse every run's arguments with the training CLI's own parser (no model is built).

    Unknown keys and bad values fail here, naming the key and the sweep file; sub-keys of
    ``model.model.overrides`` are checked against :class:`~lit_nomic.config.EncoderConfig` fields.
    """
    from dataclasses import fields

    from lit_nomic.config import EncoderConfig

    encoder_fields = {f.name for f in fields(EncoderConfig)}
    runs = sweep.runs() if runs is None else runs
    for run in runs:
        for key, value in run.overrides.items():
            if key.startswith(ENCODER_OVERRIDES_KEY + "."):
                sub = key[len(ENCODER_OVERRIDES_KEY) + 1 :]
                if sub not in encoder_fields:
                    raise SweepError(
                        f"{sweep.path}: run {run.name}: {key!r}: EncoderConfig has no field {sub!r}"
                    )
            elif key == ENCODER_OVERRIDES_KEY and isinstance(value, dict):
                unknown = sorted(set(value) - encoder_fields)
                if unknown:
                    raise SweepError(
                        f"{sweep.path}: run {run.name}: {key}: EncoderConfig has no field {unknown[0]!r}"
                    )
    parser = _training_parser(sweep.base)
    for run in runs:
        args = fit_args(sweep, run, Path("runs") / "plan-check")
        try:
            parser.parse_args(args)
        except (SystemExit, Exception) as err:  # jsonargparse: ArgumentError with the key's name
            message = str(err).strip().splitlines()
            detail = next((line for line in message if line.strip()), "invalid arguments")
            raise SweepError(f"{sweep.path}: run {run.name}: {detail.strip()}") from None


def _training_parser(base: Path) -> Any:
    """The LightningCLI parser of ``lit-nomic fit`` (built once; classes are not instantiated)."""
    import contextlib
    import io
    import warnings

    from lightning.pytorch.cli import LightningCLI

    from lit_nomic.training.cli import build_cli

    class _ParseOnly(LightningCLI):
        def instantiate_classes(self) -> None:  # planning must not load weights or data
            pass

        def _set_seed(self) -> None:
            pass

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # LightningCLI warns when given args while sys.argv holds other arguments (ours: "sweep plan").
        warnings.filterwarnings("ignore", message=".*args parameter is intended.*")
        cli = build_cli(["--config", str(base)], run=False, cli_class=_ParseOnly)
    parser = cli.parser
    parser.exit_on_error = False
    return parser
