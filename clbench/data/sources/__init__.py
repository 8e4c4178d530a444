"""Data sources: each module exposes `build_task(spec, ctx) -> Task` (see `clbench.data.streams.SOURCES`)."""
