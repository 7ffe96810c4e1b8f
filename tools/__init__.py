"""Tools outside the library: benchmarks and the generation of the README's blocks."""
