"""``syncd run``: the scheduler, hot reload and process lifecycle of the long-lived daemon."""
