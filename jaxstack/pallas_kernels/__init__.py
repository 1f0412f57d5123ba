"""Pure-function kernels (no Flax): each has a plain-JAX reference beside its fast paths."""
