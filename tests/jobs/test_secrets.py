"""Secret redaction: keys, free text, environment values; encryption_key moves to the child env."""
from __future__ import annotations

import pytest

from sparse4d.jobs.secrets import MASK, redact, redact_text, split_secrets


def test_values_under_secret_keys_are_masked_at_any_depth() -> None:
    spec = {
        "encryption_key": "tlt_encode",
        "train": {"num_epochs": 3, "wandb": {"WANDB_API_KEY": "abc123xyz", "name": "run"}},
        "aws": [{"aws_secret_access_key": "s3cr3t-value", "aws_access_key_id": "AKIA123456"}],
        "auth_token": {"nested": "tok-value"},
        "results_dir": "/tmp/r",
        "empty_password": "",
    }
    out = redact(spec)
    assert out["encryption_key"] == MASK
    assert out["train"] == {"num_epochs": 3, "wandb": {"WANDB_API_KEY": MASK, "name": "run"}}
    assert out["aws"] == [{"aws_secret_access_key": MASK, "aws_access_key_id": MASK}]
    assert out["auth_token"] == {"nested": MASK}
    assert out["results_dir"] == "/tmp/r"
    assert out["empty_password"] == ""  # "not set" stays visible
    assert spec["encryption_key"] == "tlt_encode"  # the input is not modified


def test_free_text_assignments_and_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "wandb-0123456789")
    text = 'encryption_key: tlt_key\n{"aws_secret_access_key": "zzz-top"} PASSWORD=hunter2 wandb-0123456789'
    out = redact_text(text)
    for secret in ("tlt_key", "zzz-top", "hunter2", "wandb-0123456789"):
        assert secret not in out
    assert out.count(MASK) == 4
    assert redact_text("nothing to hide: epoch=3") == "nothing to hide: epoch=3"
    assert "wandb-0123456789" in redact_text("wandb-0123456789", use_environment=False)


def test_split_secrets_blanks_disk_copy_and_passes_key_by_env() -> None:
    disk, env = split_secrets({"encryption_key": "k3y-value", "train": {"api_token": "t", "lr": 1}})
    assert disk == {"encryption_key": "", "train": {"api_token": "", "lr": 1}}
    assert env == {"SPARSE4D_ENCRYPTION_KEY": "k3y-value"}
