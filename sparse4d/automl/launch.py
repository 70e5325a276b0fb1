"""The train runner's AutoML route: `automl_policy: on` turns a resolved train spec into a study.

The spec already carries the user's data sources, output dirs, GPU settings and parent checkpoints, so
every trial keeps them. The study runs with the default budget (ASHA); `runner automl start` exposes
every budget knob, and `runner automl status|best --study NAME` follow it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from ..jobs.backend import JobBackend
from .study import Controller, StudyConfig, create_or_load_study, open_storage


def study_name_for(spec: dict[str, Any]) -> str:
    """A stable study name per resolved spec, so relaunching the same request continues its study."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"train-{digest[:12]}"


def launch_automl(spec: dict[str, Any], req: Any, *, wait: bool) -> dict[str, Any]:
    """Create (or continue) the study; run it here with --wait, else in a detached controller."""
    backend = JobBackend(req.jobs_root)
    name = study_name_for(spec)
    store = open_storage(None, backend.root, name)
    config = StudyConfig(study=name, spec=spec, overrides={}, parent_job_id=req.parent_job_id)
    study, resolved = create_or_load_study(store, config, name)
    doc: dict[str, Any] = {"launched": True, "study": name, "algorithm": resolved.algorithm}
    if not wait:
        from .cli import detach_controller

        doc.update(detach_controller(name, None, backend, 2.0))
        doc.update({"follow": f"runner automl status --study {name} --jobs-root {backend.root}", "exit_code": 0})
        return doc
    controller = Controller(study, resolved, backend, poll=2.0)
    result = controller.run()
    doc.update({"best": result.get("best"), "exit_code": 0 if result.get("best") else 1})
    return doc
