"""Image autoencoders behind one interface (`ImageAutoencoder`): the TAESD family, the SD VAE
and other diffusers autoencoders, and an offline default trained on rendered scenes."""

from visinterp.models.autoencoders.adapters import DEFAULT_SD_VAE, load_autoencoder, psnr_per_image
from visinterp.models.autoencoders.base import LATENT, ImageAutoencoder

__all__ = ["DEFAULT_SD_VAE", "LATENT", "ImageAutoencoder", "load_autoencoder", "psnr_per_image"]
