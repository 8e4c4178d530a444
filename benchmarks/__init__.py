"""Stream definitions (streams/*.yaml) and performance benchmarks (bench_*.py); installed as clbench.benchmarks."""
