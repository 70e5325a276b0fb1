"""The behaviour behind `runners/<action>.py` and `runner launch ACTION`.

validate -> plan data-source overrides -> infer spec params -> create_job, or `--dry-run` to print
the fully resolved spec. Torch-free: the trainer runs in the job's subprocess.
"""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from ..codegen.generate import repo_root
from .common import EXIT_CODES_HELP, emit_json, log, run_guarded


def _template_path(action: str) -> Path:
    return repo_root() / "references" / f"spec_template_{action}.yaml"


def launch_main(action: str, argv: list[str]) -> int:
    """Parse ``argv`` for ``action`` and run; returns the exit code."""

    @click.command(name=f"{action}", help=f"Launch the Sparse4D {action} action. {EXIT_CODES_HELP}")
    @click.option("-e", "--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Spec YAML (default: the packaged template).")
    @click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
    @click.option("--dry-run", is_flag=True, help="Validate and print the resolved spec; launch nothing.")
    @click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
    def command(spec_path: Path | None, overrides: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
        from ..config import exit_code_for, read_spec_file, validate_spec

        def body() -> int:
            data = read_spec_file(spec_path or _template_path(action))
            report = validate_spec(action, data, overrides=list(overrides), for_launch=True)
            for w in report.warnings:
                log(f"warning: {w.key}: {w.message}")
            if not report.valid:
                if as_json:
                    emit_json(report.to_dict())
                for e in report.errors:
                    log(f"error: {e.key}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
                return exit_code_for(report)
            resolved = report.spec.model_dump(mode="json")
            if as_json:
                emit_json({"action": action, "valid": True, "spec": resolved, "launched": False})
            else:
                click.echo(yaml.safe_dump(resolved, sort_keys=False))
            if not dry_run:
                log("launching needs the job backend (sparse4d.jobs); use --dry-run to only resolve the spec")
                return 1
            return 0

        run_guarded(body, as_json=as_json)

    try:
        command.main(args=argv, prog_name=f"runners/{action}.py", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
