"""The position-conditioned StyleGAN2 networks: generator, discriminator and encoder.

Images are ``(N, 1, res, res)`` tensors in [-1, 1]; the relative slice position is an ``(N,)`` float tensor in
[0, 1]. Every network takes its shape from an :class:`~AnomalyScoutLib.nets.architecture.ArchitectureConfig`.
"""
