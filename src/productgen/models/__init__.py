"""Networks: the class-conditional GAN (and, later, the VAE, translation GAN and style-transfer models)."""
