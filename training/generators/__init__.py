"""Image generators: VAE, GAN, pixel and latent diffusion; what they share, their evaluation and card."""
