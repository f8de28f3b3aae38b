"""The simulator's twin of a vllm-ascend 0.23 decode step, in seams.

`layer` lays out one decoder layer and where 0.23 issues and joins each prefetch; `engine` runs
the compute and prefetch streams over shared HBM; `steps` runs the bench's noiseless step and the
profiled steps, with the truth of their schedule; `realism` holds the profile effects and their
sizes; `bench` writes the `vllm bench serve` JSON; `writer` the profiler directory. The backend
over them is `autotune.workloads.simulate`. Everything here is MODELLED, not measured.
"""
