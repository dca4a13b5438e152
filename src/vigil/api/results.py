"""An operation's outcome as the API's answer: a result body, or an error the handler in
``app`` turns into a 500 with the outcome's detail (the operation was carried out but did
not work)."""

from __future__ import annotations

from vigil.agent.operations import Outcome
from vigil.api import schemas
from vigil.errors import VigilError


class OperationFailed(VigilError):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        super().__init__(outcome.detail)


def result(outcome: Outcome) -> schemas.OperationResult:
    """The answer of a successful operation; ``OperationFailed`` for one that did not work."""
    if not outcome.ok:
        raise OperationFailed(outcome)
    return schemas.OperationResult(**vars(outcome))
