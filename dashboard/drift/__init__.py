"""Drift: live schemas against what their recorded revisions say they should be."""
