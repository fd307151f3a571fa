"""scenes: procedurally rendered 3D scenes with exact ground truth. Imports nothing from
visinterp or ctxsae_core's consumers."""
