"""Activations on disk: the sharded activation store (`store`) and the harvests that fill it
from an image autoencoder's maps (`maps`) or a causal LM's token windows (`tokens`)."""
