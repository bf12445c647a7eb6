"""Tools above the library: the throughput profiler, its data builder and its instruction counter."""
