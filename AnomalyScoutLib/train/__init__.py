"""Training the GAN and the encoder: losses, augmentation, data, checkpoints and the two training loops."""
