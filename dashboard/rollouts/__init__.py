"""Rollouts: approved, plan-bound changes to protected environments."""
