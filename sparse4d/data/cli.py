"""Click commands of the data layer; the `sparse4d` CLI group registers them."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from sparse4d.errors import Sparse4DError


def _parse_size(value: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError as error:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, got '{value}'") from error
    if width < 16 or height < 16:
        raise click.BadParameter("width and height must be at least 16")
    return width, height


@click.command("synth-aicity")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scenes", default=1, show_default=True, type=click.IntRange(1))
@click.option("--cameras", default=2, show_default=True, type=click.IntRange(1))
@click.option("--frames", default=20, show_default=True, type=click.IntRange(1))
@click.option("--size", default="256x128", show_default=True, help="WIDTHxHEIGHT of the videos")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="split folder(s) to write (repeatable; default train)")
def synth_aicity(out: Path, scenes: int, cameras: int, frames: int, size: str, seed: int, splits: tuple[str, ...]) -> None:
    """Write synthetic AICity 2025 scenes to OUT/<split>/<Scene>/."""
    from sparse4d.data.synth import make_synthetic_dataset

    started = time.perf_counter()
    make_synthetic_dataset(out, scenes=scenes, cameras=cameras, frames=frames, size=_parse_size(size), seed=seed,
                           splits=splits or ("train",))
    click.echo(f"wrote {scenes} scene(s) x {len(splits or ('train',))} split(s) to {out} "
               f"in {time.perf_counter() - started:.1f} s")


@click.command("normalize_depth_paths")
@click.option("--data-root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="split folder the annotations refer to, e.g. <root>/train")
@click.argument("annotation_dir", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="report what would change, write nothing")
def normalize_depth_paths(data_root: Path, annotation_dir: Path, dry_run: bool) -> None:
    """Rewrite camera-folder depth references in ANNOTATION_DIR to (scene/depth_maps/Camera.h5, key)."""
    from sparse4d.data.normalize_depth import normalize_depth_paths as rewrite_depth_refs

    try:
        report = rewrite_depth_refs(data_root, annotation_dir, dry_run=dry_run)
    except Sparse4DError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    click.echo(report.format())
