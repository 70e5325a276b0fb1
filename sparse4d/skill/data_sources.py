"""Which dataset feeds which spec key, per action: the one table behind SKILL.md and skill_info.yaml.

An agent must not reinterpret prose to find `dataset.val_dataset.ann_file`; it calls
`build_data_source_overrides` (or `runner plan`), which applies this table. The SKILL.md table, the
override examples and the `data_sources` block of `references/skill_info.yaml` are rendered from
`DATA_SOURCES` too, so the documentation cannot say something the code does not do.

Path rules (``<root>`` is the dataset root of the source role, ``<converted>`` the dataset_convert
results folder or s3 prefix):

- ``root``       -> ``<root>``                                (dataset_convert aicity.root, calibration images)
- ``split_dir``  -> ``<root>/<split>``                        (dataset.data_root)
- ``anchor``     -> ``<converted>/anchor_init.npy``
- ``ann_file``   -> ``<converted>/<split>/<scene>_infos_<split>.pkl``

``<scene>`` is read from what the converter wrote (``<scene>+bev-sensor-<mode>-<k>``), never guessed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sparse4d.errors import InputFileError, SpecError, StorageError

log = logging.getLogger(__name__)

Role = Literal["train_datasets", "eval_dataset", "inference_dataset", "calibration_dataset"]
Rule = Literal["root", "split_dir", "anchor", "ann_file"]

ROLES: tuple[Role, ...] = ("train_datasets", "eval_dataset", "inference_dataset", "calibration_dataset")
SPLITS = ("train", "val", "test")
ANCHOR_FILE = "anchor_init.npy"
ACTIONS = ("dataset_convert", "train", "evaluate", "export", "inference", "quantize")
# Actions whose spec points at dataset_convert output (everything but the conversion itself).
CONVERT_CONSUMERS = ("train", "evaluate", "export", "inference", "quantize")
CONVERT_REQUIRED_MESSAGE = (
    "dataset_convert required: Must run dataset_convert first to produce annotation pickles and anchor_init.npy."
)
# The CLI flag that supplies each role's root, so an error can say exactly what to pass.
ROLE_FLAGS: dict[Role, str] = {
    "train_datasets": "--train-root",
    "eval_dataset": "--eval-root",
    "inference_dataset": "--inference-root",
    "calibration_dataset": "--calibration-root",
}


@dataclass(frozen=True)
class DataSource:
    """One mandatory spec key of one action and where its value comes from."""

    action: str
    spec_key: str
    role: Role  # the dataset the value belongs to (TAO's `source`)
    rule: Rule
    split: str | None = None  # train/val/test for split_dir and ann_file rules
    fallback_role: Role | None = None  # used when the role's own root is not given (documented per row)
    needs_convert: bool = False  # value lives in the dataset_convert results
    kind: Literal["file", "folder"] = "file"

    def pattern(self) -> str:
        """The value as a readable pattern, e.g. ``<converted>/val/<scene>_infos_val.pkl``."""
        root = f"<{self.role}>" if self.fallback_role is None else f"<{self.role} or {self.fallback_role}>"
        return _apply_rule(self, root, "<converted>", "<scene>")


def _rows(action: str, data_root_role: Role | None, data_root_split: str | None) -> list[DataSource]:
    rows: list[DataSource] = []
    if data_root_role is not None:
        fallback: Role | None = "eval_dataset" if data_root_role == "inference_dataset" else None
        rows.append(DataSource(action, "dataset.data_root", data_root_role, "split_dir", data_root_split, fallback, kind="folder"))
    rows.append(DataSource(action, "model.head.instance_bank.anchor", "train_datasets", "anchor", needs_convert=True))
    if data_root_role is None:  # export needs only the anchors
        return rows
    for split, role in (("train", "train_datasets"), ("val", "eval_dataset"), ("test", "inference_dataset")):
        rows.append(DataSource(action, f"dataset.{split}_dataset.ann_file", role, "ann_file", split, needs_convert=True))  # type: ignore[arg-type]
    return rows


# The single source. Order matters: it is the order of the rendered table and of the override dicts.
DATA_SOURCES: tuple[DataSource, ...] = (
    DataSource("dataset_convert", "aicity.root", "train_datasets", "root", kind="folder"),
    *_rows("train", "train_datasets", "train"),
    *_rows("evaluate", "eval_dataset", "val"),
    *_rows("export", None, None),
    # Inference reads the test split; with no separate inference root the eval root's test/ is used.
    *_rows("inference", "inference_dataset", "test"),
    *_rows("quantize", "train_datasets", "train"),
    # Calibration images default to the train root when no calibration root is given.
    DataSource("quantize", "dataset.quant_calibration_dataset.images_dir", "calibration_dataset", "root",
               fallback_role="train_datasets", kind="folder"),
)


def sources_for(action: str) -> tuple[DataSource, ...]:
    """The rows of one action (raises SpecError for an unknown action)."""
    if action not in ACTIONS:
        raise SpecError(f"unknown action {action!r}", hint=f"use one of: {', '.join(ACTIONS)}")
    return tuple(row for row in DATA_SOURCES if row.action == action)


def data_source_keys(action: str) -> list[str]:
    """The spec keys the action's mandatory data-source overrides set, in table order."""
    return [row.spec_key for row in sources_for(action)]


def needs_convert(action: str) -> bool:
    """True when the action's spec points at dataset_convert results."""
    return any(row.needs_convert for row in sources_for(action))


def required_roles(action: str) -> tuple[Role, ...]:
    """Roles whose dataset root (or fallback root) the action needs, in table order."""
    out: list[Role] = []
    for row in sources_for(action):
        if row.rule in ("root", "split_dir") and row.role not in out:
            out.append(row.role)
    return tuple(out)


# --------------------------------------------------------------------------- paths


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def join(base: str, *parts: str) -> str:
    """Join with '/' for both local paths and s3 prefixes (no doubled or trailing slashes)."""
    out = base.rstrip("/") if base not in ("/", "") else base
    for part in parts:
        out = f"{out}/{part.strip('/')}" if out not in ("", "/") else f"{out}{part.strip('/')}"
    return out


def _apply_rule(row: DataSource, root: str, converted: str, scene: str) -> str:
    if row.rule == "root":
        return root
    if row.rule == "split_dir":
        return join(root, row.split or "")
    if row.rule == "anchor":
        return join(converted, ANCHOR_FILE)
    return join(converted, row.split or "", f"{scene}_infos_{row.split}.pkl")


# --------------------------------------------------------------------------- scene discovery

Lister = Callable[[str], Iterable[str]]  # s3 prefix -> object keys below it


def scene_from_annotation_name(name: str, split: str) -> str | None:
    """``x+bev-sensor-random-0_infos_val.pkl`` -> ``x+bev-sensor-random-0``; None for other files."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    suffix = f"_infos_{split}.pkl"
    if not base.endswith(suffix) or len(base) == len(suffix):
        return None
    return base[: -len(suffix)]


def _local_lister(path: str) -> list[str]:
    folder = Path(path)
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file())


def s3_lister(prefix: str) -> list[str]:
    """List object keys under an ``s3://bucket/prefix`` with boto3 (imported only when used)."""
    import boto3  # noqa: PLC0415 - only s3 users pay for the import
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    bucket, _, key_prefix = prefix[len("s3://"):].partition("/")
    key_prefix = key_prefix.rstrip("/") + "/" if key_prefix else ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")
    try:
        client = boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot list {prefix}: {exc}", hint="check the bucket name, credentials and endpoint") from exc
    return keys


def discover_scene(converted: str, split: str, *, scene: str | None = None, lister: Lister | None = None,
                   action: str = "train") -> str:
    """The scene basename dataset_convert wrote for ``split`` (``<converted>/<split>/<scene>_infos_<split>.pkl``).

    With ``scene`` given, checks that exactly that file exists. Several candidates without ``scene``
    is an error: guessing one would silently train on the wrong annotations.
    """
    split_dir = join(converted, split)
    # The injected lister serves s3 prefixes (tests, custom endpoints); local folders are listed directly.
    lister = (lister or s3_lister) if is_s3(converted) else _local_lister
    found = sorted({name for name in (scene_from_annotation_name(n, split) for n in lister(split_dir)) if name})
    if not found:
        raise InputFileError(
            f"{action} needs dataset_convert annotations, but {split_dir} has no *_infos_{split}.pkl",
            key=f"dataset.{split}_dataset.ann_file",
            hint=f"{CONVERT_REQUIRED_MESSAGE} Pass the results folder of a finished dataset_convert job.",
        )
    if scene is not None:
        if scene not in found:
            raise InputFileError(
                f"{split_dir}/{scene}_infos_{split}.pkl does not exist (dataset_convert wrote: {', '.join(found)})",
                key=f"dataset.{split}_dataset.ann_file",
                hint="use one of the scene basenames listed, exactly as written",
            )
        return scene
    if len(found) > 1:
        raise SpecError(
            f"{split_dir} holds several converted scenes: {', '.join(found)}",
            key=f"dataset.{split}_dataset.ann_file",
            hint=(f"pick one with --scene, or train on all of them with "
                  f"-o dataset.{split}_dataset.ann_file={split_dir} (the dataset reads every *_infos_{split}.pkl "
                  "in a folder)"),
        )
    return found[0]


# --------------------------------------------------------------------------- overrides


@dataclass
class DataSourceResolution:
    """The mandatory overrides plus what the caller should know about how they were made."""

    overrides: dict[str, str]
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {source, role_used, value}
    scenes: dict[str, str] = field(default_factory=dict)  # split -> scene basename read from disk
    warnings: list[str] = field(default_factory=list)


def _root_for(row: DataSource, roots: Mapping[str, str]) -> tuple[str, Role]:
    for role in (row.role, row.fallback_role):
        if role is not None and roots.get(role):
            return roots[role], role
    wanted = row.role if row.fallback_role is None else f"{row.role} (or {row.fallback_role})"
    flags = " or ".join(ROLE_FLAGS[r] for r in (row.role, row.fallback_role) if r is not None)
    raise InputFileError(
        f"{row.action} needs the {wanted} dataset for {row.spec_key}, but none was given",
        key=row.spec_key,
        hint=f"pass {flags} <dataset root>",
    )


def render_overrides(action: str, roots: Mapping[str, str], converted: str | None,
                     scenes: Mapping[str, str]) -> dict[str, str]:
    """Apply the table with known roots, results folder and scene names (no disk access)."""
    out: dict[str, str] = {}
    for row in sources_for(action):
        root = _root_for(row, roots)[0] if row.rule in ("root", "split_dir") else ""
        if row.needs_convert and not converted:
            raise InputFileError(f"{action} needs dataset_convert results for {row.spec_key}", key=row.spec_key,
                                 hint=CONVERT_REQUIRED_MESSAGE)
        out[row.spec_key] = _apply_rule(row, root, converted or "", scenes.get(row.split or "", ""))
    return out


def _check_local(path: str, kind: str, key: str, action: str) -> None:
    if is_s3(path):
        return
    exists = Path(path).is_dir() if kind == "folder" else Path(path).is_file()
    if not exists:
        hint = CONVERT_REQUIRED_MESSAGE if key == "model.head.instance_bank.anchor" else "check the dataset root you passed"
        raise InputFileError(f"{action}: {path} does not exist", key=key, hint=hint)


def resolve_data_sources(
    action: str,
    roots: Mapping[str, str],
    converted: str | None,
    scene: str | None = None,
    user_overrides: Mapping[str, str] | None = None,
    *,
    lister: Lister | None = None,
    check_exists: bool = True,
) -> DataSourceResolution:
    """Build the action's mandatory overrides, merged with the user's (the user wins, with a warning)."""
    rows = sources_for(action)
    user = {k: str(v) for k, v in (user_overrides or {}).items()}
    roots = {k: v for k, v in roots.items() if v}
    unknown = set(roots) - set(ROLES)
    if unknown:
        raise SpecError(f"unknown dataset role(s): {', '.join(sorted(unknown))}", hint=f"use {', '.join(ROLES)}")
    result = DataSourceResolution(overrides={})
    if any(row.needs_convert for row in rows) and not converted:
        raise InputFileError(f"{action} needs dataset_convert results (annotation pickles and {ANCHOR_FILE})",
                             key="dataset_convert", hint=CONVERT_REQUIRED_MESSAGE)
    for row in rows:
        if row.rule == "ann_file" and row.spec_key not in user and row.split not in result.scenes:
            result.scenes[row.split or ""] = discover_scene(converted or "", row.split or "", scene=scene,
                                                            lister=lister, action=action)
    built = render_overrides(action, roots, converted, {**{s: "" for s in SPLITS}, **result.scenes})
    for row in rows:
        value = built[row.spec_key]
        role_used = _root_for(row, roots)[1] if row.rule in ("root", "split_dir") else row.role
        if role_used != row.role:
            result.warnings.append(f"{row.spec_key}: no {row.role} root given, using the {role_used} root ({value})")
        if row.spec_key in user:
            if user[row.spec_key] != value:
                result.warnings.append(
                    f"{row.spec_key}: your override {user[row.spec_key]!r} replaces the data-source value {value!r}")
            value = user[row.spec_key]
        elif check_exists:
            try:
                _check_local(value, row.kind, row.spec_key, action)
            except InputFileError as exc:
                if action != "export":
                    raise
                # Export rebuilds the network (anchors included) from the checkpoint; the key stays for
                # TAO compatibility, so a missing file only earns a warning.
                result.warnings.append(f"{row.spec_key}: {exc.message} (export takes the anchors from the checkpoint)")
        result.overrides[row.spec_key] = value
        result.sources[row.spec_key] = {"source": row.role, "role_used": role_used, "value": value}
    if len(set(result.scenes.values())) > 1:
        result.warnings.append("converted scene basenames differ between splits: "
                               + ", ".join(f"{s}={n}" for s, n in sorted(result.scenes.items())))
    for key, value in user.items():  # the user's other overrides ride along unchanged
        result.overrides.setdefault(key, value)
    for message in result.warnings:
        log.warning(message)
    return result


def build_data_source_overrides(
    action: str,
    roots: Mapping[str, str],
    converted: str | None,
    scene: str | None = None,
    user_overrides: Mapping[str, str] | None = None,
    *,
    lister: Lister | None = None,
    check_exists: bool = True,
) -> dict[str, str]:
    """The mandatory ``spec_overrides`` of ``action`` (plus the user's own), as the seed's examples show.

    ``roots`` maps a role (train_datasets, eval_dataset, inference_dataset, calibration_dataset) to a
    local folder or ``s3://`` prefix; ``converted`` is the dataset_convert results folder or prefix.
    Conflicts with ``user_overrides`` are logged as warnings; use `resolve_data_sources` to get them.
    """
    return resolve_data_sources(action, roots, converted, scene, user_overrides, lister=lister,
                                check_exists=check_exists).overrides
