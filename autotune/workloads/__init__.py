"""Workload backends: run one trial (start, warm up, measure, profile, stop) behind one protocol."""
