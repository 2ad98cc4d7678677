"""Jobs: one execution of a plan (or a stamp) on one environment, run by a supervised child."""
