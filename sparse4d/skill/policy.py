"""Per-run AutoML policy: should this train request go through AutoML or train directly?

Order: an explicit ``automl_policy`` value, then phrases in the request ("no HPO", "plain training",
...), then the default ``on``. Only ``on`` and ``off`` exist. The decision is for this run only: nothing
here writes metadata (skill_info.yaml stays as packaged). Non-train actions never route to AutoML.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import yaml

from sparse4d.errors import SpecError

AUTOML_ROUTE = "tao-skill-bank:tao-run-automl"
DIRECT_ROUTE = "direct"
NOT_RUNNABLE_REPORT = "AutoML is enabled but not runnable for this model until schemas are generated"
NOT_ENABLED_REPORT = "AutoML is not enabled for this model (automl_enabled: false in references/skill_info.yaml)"
POLICIES = ("on", "off")
TRAIN_SCHEMA = Path("schemas/train.schema.json")
TRAIN_TEMPLATE = Path("references/spec_template_train.yaml")
SKILL_INFO = Path("references/skill_info.yaml")

Policy = Literal["on", "off"]
Source = Literal["explicit", "request", "default"]


def default_skill_dir() -> Path:
    """The plugin root holding schemas/, references/ and skills/sparse4d/ (override: $SPARSE4D_SKILL_DIR)."""
    env = os.environ.get("SPARSE4D_SKILL_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PolicyDecision:
    """The resolved policy and what it means for the run."""

    action: str
    policy: Policy
    source: Source
    route: str  # AUTOML_ROUTE or DIRECT_ROUTE
    skill_dir: str
    automl_enabled: bool
    runnable: bool  # train schema and template are packaged and parse
    report: str | None  # why AutoML is not used although the policy is on
    matched_phrase: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --------------------------------------------------------------------------- phrases

_AUTOML = r"(?:auto[\s-]?ml|hpo|hyper[\s-]?parameter\s+(?:optimi[sz]ation|search|tuning|sweeps?))"
# Each pattern, found without a negation before it, asks for AutoML off.
_OFF_PATTERNS = (
    rf"\b(?:turn|switch|shut|toggle)(?:ing)?\s+(?:the\s+)?{_AUTOML}\s+off\b",
    rf"\b(?:turn|switch|shut|toggle)(?:ing)?\s+off\s+(?:the\s+)?{_AUTOML}",
    rf"\b(?:disable|disabling|deactivate|skip|skipping|bypass|avoid)\s+(?:the\s+)?{_AUTOML}",
    rf"\b{_AUTOML}\s+(?:disabled|off|skipped)\b",
    rf"\bno\s+{_AUTOML}",
    rf"\bwithout\s+(?:any\s+|the\s+|using\s+)?{_AUTOML}",
    r"\bplain(?:\s+old)?\s+training\b",
    r"\bplain\s+(?:sparse4d\s+)?train(?:ing)?\s+(?:run|job)\b",
    rf"\b(?:don'?t|do\s+not|never|not)\s+(?:use|run|want|need|do|apply)\s+(?:any\s+|the\s+)?{_AUTOML}",
    rf"\b{_AUTOML}\s+(?:is\s+)?not\s+(?:needed|wanted|required)\b",
)
# Found without a negation before it: asks for AutoML on (only changes the reported source).
_NOT_OFF_AFTER = r"(?!\s+(?:off|disabled|turned\s+off|switched\s+off)\b)"
_ON_PATTERNS = (
    rf"\b(?:turn|switch)\s+on\s+(?:the\s+)?{_AUTOML}",
    rf"\b(?:turn|switch)\s+(?:the\s+)?{_AUTOML}\s+on\b",
    rf"\b(?:enable|use|run|with|keep)\s+(?:the\s+)?{_AUTOML}{_NOT_OFF_AFTER}",
    rf"\b{_AUTOML}\s+(?:enabled|on)\b",
)
# A negation in the same clause, at most three words before the phrase, flips it.
_NEGATION = re.compile(
    r"\b(?:don'?t|do\s+not|doesn'?t|does\s+not|never|not|no\s+need\s+to|shouldn'?t|should\s+not|"
    r"won'?t|mustn'?t|must\s+not|without)\s+(?:\w+\s+){0,2}$"
)
_EXPLICIT_IN_REQUEST = re.compile(r"\bautoml_policy\s*[:=]\s*[\"']?([\w-]+)")


def _normalise(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", text.lower())


def _clause_before(text: str, start: int) -> str:
    before = text[:start]
    cut = max(before.rfind(ch) for ch in ".;,!?\n")
    return before[cut + 1:]


def _unnegated_matches(text: str, patterns: tuple[str, ...]) -> list[str]:
    hits: list[str] = []
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            if not _NEGATION.search(_clause_before(text, match.start())):
                hits.append(match.group(0).strip())
    return hits


def _negated_off(text: str) -> str | None:
    """The negated off-phrase ("don't turn off automl") when the request has one."""
    for pattern in _OFF_PATTERNS:
        for match in re.finditer(pattern, text):
            negation = _NEGATION.search(_clause_before(text, match.start()))
            if negation:
                return (negation.group(0) + match.group(0)).strip()
    return None


def check_policy_value(value: str, *, key: str = "automl_policy") -> Policy:
    """'on' or 'off' (case and surrounding spaces ignored); anything else is a SpecError."""
    cleaned = str(value).strip().lower()
    if cleaned not in POLICIES:
        raise SpecError(f"{value!r} is not a valid AutoML policy", key=key, hint="use 'on' or 'off'")
    return cleaned  # type: ignore[return-value]


def policy_from_request(request: str | None) -> tuple[Policy | None, str | None]:
    """(policy, phrase) the request asks for, or (None, None) when it says nothing about AutoML."""
    if not request:
        return None, None
    text = _normalise(request)
    explicit = _EXPLICIT_IN_REQUEST.search(text)
    if explicit:
        return check_policy_value(explicit.group(1)), explicit.group(0)
    off = _unnegated_matches(text, _OFF_PATTERNS)
    on = _unnegated_matches(text, _ON_PATTERNS)
    if off and on:
        raise SpecError(
            f"the request both asks for AutoML ({on[0]!r}) and against it ({off[0]!r})",
            key="automl_policy",
            hint="pass --automl-policy on or --automl-policy off",
        )
    if off:
        return "off", off[0]
    if on:
        return "on", on[0]
    negated = _negated_off(text)
    if negated:  # "don't disable AutoML": an explicit wish to keep it
        return "on", negated
    return None, None


# --------------------------------------------------------------------------- runnability


def _parses(path: Path, loader: str) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if loader == "json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and bool(data)


def automl_runnable(skill_dir: Path) -> bool:
    """Both the packaged train schema and the train spec template exist and parse."""
    return _parses(skill_dir / TRAIN_SCHEMA, "json") and _parses(skill_dir / TRAIN_TEMPLATE, "yaml")


def automl_enabled(skill_dir: Path) -> bool:
    """`automl_enabled` from references/skill_info.yaml (the model-layer declaration; default true)."""
    try:
        info = yaml.safe_load((skill_dir / SKILL_INFO).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return True  # the declaration is part of this package; a missing file does not disable AutoML
    return bool(info.get("automl_enabled", True)) if isinstance(info, dict) else True


def resolve_automl_policy(
    request: str | None,
    explicit: str | None = None,
    *,
    action: str = "train",
    skill_dir: Path | str | None = None,
) -> PolicyDecision:
    """Resolve the AutoML policy of one run and the route it implies.

    ``explicit`` (from ``--automl-policy`` or a workflow's ``automl_policy``) wins over the request text.
    """
    root = Path(skill_dir) if skill_dir is not None else default_skill_dir()
    if explicit is not None and str(explicit).strip() != "":
        policy, source, phrase = check_policy_value(explicit), "explicit", None
    else:
        asked, phrase = policy_from_request(request)
        policy, source = (asked, "request") if asked else ("on", "default")
    enabled = automl_enabled(root)
    runnable = automl_runnable(root)
    report: str | None = None
    route = DIRECT_ROUTE
    if action == "train" and policy == "on":
        if not enabled:
            report = NOT_ENABLED_REPORT
        elif not runnable:
            report = NOT_RUNNABLE_REPORT
        else:
            route = AUTOML_ROUTE
    return PolicyDecision(
        action=action,
        policy=policy,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        route=route,
        skill_dir=str(root),
        automl_enabled=enabled,
        runnable=runnable,
        report=report,
        matched_phrase=phrase,
    )
