"""BiGAN's generator and joint discriminator (the image <-> patch-unit conversions are
:mod:`mmssl.objectives.pixel_decoder`'s)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


class Generator(nn.Module):
    """DCGAN's generator (Radford et al. 2016): ``z`` -> a ``base x base`` map of ``width * 2^k`` channels, then ``k``
    stride-2 transposed convolutions halving the channels, each with batch norm and ReLU, and a 3x3 convolution to
    the image's channels. The output is not squashed by a tanh: the units are standardised pixels, not ``[-1, 1]``.

    Args:
        z_dim: latent size.
        channels: image channels.
        image_size: side of the square image, ``base * 2^upsamples``.
        width: channels of the last stage (DCGAN's ``ngf``).
        upsamples: stride-2 stages ``k``.
    """

    def __init__(self, z_dim: int, channels: int, image_size: int, width: int, upsamples: int) -> None:
        super().__init__()
        self.base, self.top = image_size // 2**upsamples, width * 2**upsamples
        cells = self.top * self.base**2
        self.project = nn.Sequential(nn.Linear(z_dim, cells, bias=False), nn.BatchNorm1d(cells), nn.ReLU())
        layers: list[nn.Module] = []
        ch = self.top
        for _ in range(upsamples):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        layers.append(nn.Conv2d(ch, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """``[B, z_dim]`` -> ``[B, C, image_size, image_size]``."""
        return self.body(self.project(z).view(-1, self.top, self.base, self.base))


class Scores(NamedTuple):
    """The discriminator's logits of each pair, ``[B]`` each; ``image`` and ``latent`` are None without unary terms."""

    joint: Tensor  # s_xz = J(F(x), H(z))
    image: Tensor | None  # s_x = theta_x . F(x)
    latent: Tensor | None  # s_z = theta_z . H(z)


def _layer(module: nn.Module, spectral: bool) -> nn.Module:
    return spectral_norm(module) if spectral else module


class JointDiscriminator(nn.Module):
    """BigBiGAN's discriminator (Donahue & Simonyan 2019, sec. 2): ``F`` (a DCGAN convolutional net on ``x``), ``H``
    (an MLP on ``z``) and ``J`` (an MLP on ``[F(x), H(z)]``) giving the joint score ``s_xz``; with ``unary`` also the
    linear unary scores ``s_x`` of ``F(x)`` and ``s_z`` of ``H(z)``. No batch norm (each score depends on its own
    pair only); LeakyReLU(0.2) as DCGAN's; spectral norm on every layer if ``spectral`` (Miyato et al. 2018,
    BigGAN and BigBiGAN).

    Args:
        channels: image channels.
        image_size: image side; ``downsamples`` stride-2 convolutions divide it exactly.
        z_dim: latent size.
        width: channels of the first convolution, doubling per stage (DCGAN's ``ndf``).
        downsamples: stride-2 convolutions.
        mlp_width: width of ``F``'s output and of the ``H`` and ``J`` MLPs.
        unary: also give ``s_x`` and ``s_z``.
        spectral: spectral-normalise every layer.
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        z_dim: int,
        width: int,
        downsamples: int,
        mlp_width: int,
        unary: bool,
        spectral: bool,
    ) -> None:
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        convs: list[nn.Module] = []
        ch_in, ch = channels, width
        for _ in range(downsamples):
            convs += [_layer(nn.Conv2d(ch_in, ch, 4, 2, 1), spectral), act()]
            ch_in, ch = ch, ch * 2
        side = image_size // 2**downsamples
        flat = ch_in * side * side
        self.image_net = nn.Sequential(*convs, nn.Flatten(), _layer(nn.Linear(flat, mlp_width), spectral), act())
        self.latent_net = nn.Sequential(
            _layer(nn.Linear(z_dim, mlp_width), spectral),
            act(),
            _layer(nn.Linear(mlp_width, mlp_width), spectral),
            act(),
        )
        self.joint = nn.Sequential(
            _layer(nn.Linear(2 * mlp_width, mlp_width), spectral), act(), _layer(nn.Linear(mlp_width, 1), spectral)
        )
        self.image_score = _layer(nn.Linear(mlp_width, 1), spectral) if unary else None
        self.latent_score = _layer(nn.Linear(mlp_width, 1), spectral) if unary else None

    def forward(self, images: Tensor, z: Tensor) -> Scores:
        """``[B, C, H, W]`` images and ``[B, z_dim]`` latents -> :class:`Scores` of each ``(x, z)`` pair."""
        fx, hz = self.image_net(images), self.latent_net(z)  # [B, mlp_width] each
        joint = self.joint(torch.cat([fx, hz], dim=-1)).squeeze(-1)
        if self.image_score is None:
            return Scores(joint, None, None)
        return Scores(joint, self.image_score(fx).squeeze(-1), self.latent_score(hz).squeeze(-1))
