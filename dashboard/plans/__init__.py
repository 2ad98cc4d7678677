"""Plans: an environment's upgrade or downgrade resolved into steps, SQL and a fingerprint."""

from dashboard.plans.service import Plan, PlanStep, build_plan, clear_plan_cache

__all__ = ["Plan", "PlanStep", "build_plan", "clear_plan_cache"]
