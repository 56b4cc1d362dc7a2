"""Differential-privacy accounting shared by clients, server and simulations."""

from common.privacy.accounting import (
    AccountantState,
    PrivacyConfigError,
    check_delta,
    independent_epsilon,
    noise_multiplier_for_plan,
)

__all__ = [
    "AccountantState",
    "PrivacyConfigError",
    "check_delta",
    "independent_epsilon",
    "noise_multiplier_for_plan",
]
