"""Activation checkpointing for transformer-style PyTorch models.

from ac import ACConfig, apply_ac
apply_ac(model, ACConfig(mode="selective", selective_ac_option="op"))
"""

from ac.apply import apply_ac
from ac.config import ACConfig
from ac.modes import budget_plans

__all__ = ["ACConfig", "apply_ac", "budget_plans"]
