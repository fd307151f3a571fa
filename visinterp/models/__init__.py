"""Model adapters behind one interface each: image autoencoders (`autoencoders`: the TAESD family,
diffusers autoencoders, the offline default) and causal LMs (`causal_lm`), with named hooks to read
and splice."""
