"""The load generator behind `sluicegate bench`."""
