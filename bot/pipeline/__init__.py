"""The verification flow, stage by stage."""

from bot.pipeline.plan import Plan, make_plan
from bot.pipeline.run import Kept, Pipeline, VerifyRequest, new_run_id
from bot.pipeline.stages import Cancelled, StageListener
from bot.pipeline.update import ServiceUpdate, UpdateRequest, UpdateResult, update_sandbox

__all__ = [
    "Cancelled",
    "Kept",
    "Pipeline",
    "Plan",
    "ServiceUpdate",
    "StageListener",
    "UpdateRequest",
    "UpdateResult",
    "VerifyRequest",
    "make_plan",
    "new_run_id",
    "update_sandbox",
]
