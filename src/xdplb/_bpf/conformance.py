"""mypy's proof that the real data plane and the fake implement the whole kernel contract
(contract.DataPlaneApi): assigning an instance of each to the Protocol type fails the
type check as soon as one lacks a method or has another signature."""
from __future__ import annotations

from .contract import DataPlaneApi
from .dataplane import DataPlane
from .fake import FakeDataPlane


def conforms(real: DataPlane, fake: FakeDataPlane) -> tuple[DataPlaneApi, DataPlaneApi]:
    checked_real: DataPlaneApi = real
    checked_fake: DataPlaneApi = fake
    return checked_real, checked_fake
