"""`sparse4d`: the bundled trainer CLI, the same shape TAO uses: `sparse4d <action> -e spec.yaml [key=value ...]`.

Each action validates its spec (schema, cross-key and file checks) before importing torch, then runs
the action module. Utilities: `synth-aicity` (synthetic AICity scenes), `normalize-depth-paths`.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from .common import EXIT_CODES_HELP, log, run_guarded

ENCRYPTION_KEY_ENV = "SPARSE4D_ENCRYPTION_KEY"


def _load(action: str, spec_path: Path, overrides: tuple[str, ...]):
    from ..config import load_spec

    spec, warnings = load_spec(action, str(spec_path), list(overrides))
    for w in warnings:
        log(f"warning: {w.key}: {w.message}")
    if hasattr(spec, "encryption_key") and not spec.encryption_key and os.environ.get(ENCRYPTION_KEY_ENV):
        spec.encryption_key = os.environ[ENCRYPTION_KEY_ENV]  # secrets travel by env, never in spec.yaml
    results_dir = getattr(spec, "results_dir", "")
    if not results_dir:
        spec.results_dir = str(Path.cwd() / "results" / action)
        log(f"results_dir is empty: writing to {spec.results_dir}")
    Path(spec.results_dir).mkdir(parents=True, exist_ok=True)
    return spec


def _run_action(action: str, spec_path: Path, overrides: tuple[str, ...]) -> None:
    def body() -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        spec = _load(action, spec_path, overrides)
        if action == "dataset_convert":
            _convert_splits(spec)
        elif action == "train":
            from ..engine.train import run_train

            run_train(spec)
        elif action == "evaluate":
            from ..engine.evaluate import run_evaluate

            run_evaluate(spec)
        elif action == "inference":
            from ..engine.inference import run_inference

            run_inference(spec)
        elif action == "export":
            from ..engine.export import run_export

            run_export(spec)
        elif action == "quantize":
            from ..engine.quantize import run_quantize

            run_quantize(spec)
        return 0

    run_guarded(body)


def _convert_splits(spec) -> None:
    """Convert each split of `aicity.split` (one name or a comma-separated list) into results_dir/<split>/."""
    from ..data.convert import run_dataset_convert
    from ..errors import SpecError

    splits = [s.strip() for s in spec.aicity.split.split(",") if s.strip()]
    if not splits or len(set(splits)) != len(splits):
        raise SpecError(f"{spec.aicity.split!r} names no split or repeats one", key="aicity.split", hint="e.g. train or train,val,test")
    for split in splits:
        run_dataset_convert(spec.aicity.model_copy(update={"split": split}), Path(spec.results_dir))


@click.group(help=f"Sparse4D trainer: sparse4d <action> -e spec.yaml [key=value ...]. {EXIT_CODES_HELP}")
def cli() -> None:
    pass


def _action_command(action: str) -> click.Command:
    @click.command(name=action, help=f"Run {action} with the spec (YAML) and dotted key=value overrides.")
    @click.option("-e", "--experiment-spec", "spec_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Spec YAML file.")
    @click.argument("overrides", nargs=-1)
    def command(spec_path: Path, overrides: tuple[str, ...]) -> None:
        _run_action(action, spec_path, overrides)

    return command


for _action in ("dataset_convert", "train", "evaluate", "inference", "export", "quantize"):
    cli.add_command(_action_command(_action))


def _mount_data_commands() -> None:
    try:
        from ..data.cli import normalize_depth_paths, synth_aicity
    except ImportError:
        return
    cli.add_command(synth_aicity, "synth-aicity")
    cli.add_command(normalize_depth_paths, "normalize-depth-paths")


_mount_data_commands()


def main() -> None:
    cli(prog_name="sparse4d")


if __name__ == "__main__":
    main()
