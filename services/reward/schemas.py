"""The wire format of POST /v1/score.

The request model is built from the settings, so the OpenAPI schema lists the configured tasks and registered
reward functions, and a wrong name is refused with a 422 that names the field before any work starts.
"""

from typing import Any, Literal

from pydantic import BaseModel, Field

from cfpo.clients.reward import ItemReward
from cfpo.clients.reward import ScoreItem as AnyScoreItem
from cfpo.config import StrictModel
from services.reward.functions import REGISTRY
from services.reward.settings import RewardSettings, Weight


class ScoreResponse(BaseModel):
    rewards: list[ItemReward] = Field(description="one per item, in the order of the items")


def score_request_model(settings: RewardSettings) -> type[StrictModel]:
    # Literals of the configured names, made at run time: mypy cannot check them, so they are Any to it.
    task_name: Any = Literal[tuple(settings.tasks)]
    function_name: Any = Literal[tuple(sorted(REGISTRY))]
    override = dict[function_name, Weight] | None
    override_help = "{reward function: weight} used instead of the task's combination"

    class ScoreItem(AnyScoreItem):
        completion: str = Field(max_length=settings.max_completion_chars)
        task: task_name = Field(description="picks the weighted reward functions (the service's tasks setting)")
        rewards: override = Field(None, min_length=1, description=override_help + " for this item")

    class ScoreRequest(StrictModel):
        items: list[ScoreItem] = Field(max_length=settings.max_items)
        rewards: override = Field(None, min_length=1, description=override_help + " for every item")

    return ScoreRequest
