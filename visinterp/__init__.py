"""visinterp: joins model adapters (SD autoencoders, coordinate MLPs, causal LMs) to the
contextual-SAE core, and holds the analyses and reports built on both."""
