"""Sparse4D v3 network in plain PyTorch.

Import parts from their modules (`sparse4d.model.sparse4d.Sparse4D`, ...). This package file stays
empty of torch imports so `sparse4d.model.unsupported` can be used by the torch-free validator.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("Sparse4D", "InstanceBankState"):
        from . import instance_bank, sparse4d

        return {"Sparse4D": sparse4d.Sparse4D, "InstanceBankState": instance_bank.InstanceBankState}[name]
    raise AttributeError(name)
