"""`runner`: the agent/operator CLI (torch-free). Validate specs, plan, launch and follow jobs, AutoML."""
from __future__ import annotations

from pathlib import Path

import click

from ..config.experiment import ACTIONS
from .common import EXIT_CODES_HELP, emit_json, log, run_guarded


@click.group(help=f"Sparse4D skill-bank runner. {EXIT_CODES_HELP}")
def cli() -> None:
    pass


@cli.command(help="Regenerate schemas/, spec templates, runners and SKILL.md tables from the config models.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and name the stale files if any.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None, help="Repository root (default: the package's checkout).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def generate(check: bool, root: Path | None, as_json: bool) -> None:
    from ..codegen.generate import generate as write_all, repo_root, stale_files

    def body() -> int:
        base = root or repo_root()
        if check:
            stale = stale_files(base)
            if as_json:
                emit_json({"ok": not stale, "stale": stale})
            for rel in stale:
                log(f"stale: {rel} (run `runner generate`)")
            return 1 if stale else 0
        changed = write_all(base)
        if as_json:
            emit_json({"ok": True, "written": changed})
        else:
            log(f"wrote {len(changed)} file(s)" + "".join(f"\n  {c}" for c in changed))
        return 0

    run_guarded(body, as_json=as_json)


@cli.group(help="Validate inputs before any GPU time is spent.")
def validate() -> None:
    pass


@validate.command("spec", help=f"Validate SPEC (YAML) for ACTION: schema, cross-key and file checks. {EXIT_CODES_HELP}")
@click.argument("action", type=click.Choice(ACTIONS))
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec key (repeatable).")
@click.option("--launch", "for_launch", is_flag=True, help="Also apply launch-time checks (e.g. WANDB_API_KEY).")
@click.option("--json", "as_json", is_flag=True, help='Print {"valid", "errors", "warnings"} on stdout.')
def validate_spec_cmd(action: str, spec: Path, overrides: tuple[str, ...], for_launch: bool, as_json: bool) -> None:
    from ..config import exit_code_for, read_spec_file, validate_spec
    from ..config.loading import SpecReport

    def body() -> int:
        report = validate_spec(action, read_spec_file(spec), overrides=list(overrides), for_launch=for_launch)
        _print_report(report, spec, as_json)
        return exit_code_for(report)

    def body_json_errors() -> int:
        try:
            return body()
        except Exception as exc:  # a file-level error still yields the documented JSON shape
            from ..errors import Sparse4DError

            if not (as_json and isinstance(exc, Sparse4DError)):
                raise
            report = SpecReport(action)
            from ..config.loading import SpecIssue

            report.errors.append(SpecIssue(exc.key or "<file>", exc.message, exc.hint))
            emit_json(report.to_dict() | {"valid": False})
            return exc.exit_code

    run_guarded(body_json_errors, as_json=as_json)


def _print_report(report, spec: Path, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    for w in report.warnings:
        log(f"warning: {w.key}: {w.message}" + (f" ({w.hint})" if w.hint else ""))
    for e in report.errors:
        log(f"error: {e.key}: {e.message}" + (f" ({e.hint})" if e.hint else ""))
    log(f"{spec}: {'valid' if report.valid else f'invalid ({len(report.errors)} error(s))'} {report.action} spec")


@cli.command("launch", context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}, add_help_option=False, help="Launch ACTION like runners/<action>.py (see `runner launch ACTION --help`).")
@click.argument("action", type=click.Choice(ACTIONS))
@click.pass_context
def launch(ctx: click.Context, action: str) -> None:
    from .launch import launch_main

    raise SystemExit(launch_main(action, list(ctx.args)))


def _mount_demo() -> None:
    from .demo import demo

    cli.add_command(demo)


_mount_demo()


def _mount_optional() -> None:
    """Mount command groups of the skill, jobs and AutoML layers (each torch-free)."""
    try:
        from ..skill.cli import plan, policy
    except ImportError:
        pass
    else:
        cli.add_command(policy)
        cli.add_command(plan)
    try:
        from ..jobs.cli import job
    except ImportError:
        pass
    else:
        cli.add_command(job)
    try:
        from ..automl.cli import automl
    except ImportError:
        pass
    else:
        cli.add_command(automl)


_mount_optional()


def main() -> None:
    cli(prog_name="runner")


if __name__ == "__main__":
    main()
