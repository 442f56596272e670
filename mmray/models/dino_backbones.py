"""Backbones for self-supervised pretraining that the encoder registry can load back by name.

* ``cnn_small``: :class:`SmallCNN`, a patchifying stem and four
  Conv-GroupNorm-GELU stages with global average pooling (128-d), written for
  CPU pretraining: about 0.3 M parameters, no BatchNorm (so data-parallel workers need no
  synchronised statistics) and any input size; ``spatial_dims=3`` makes the
  same network for volumes (CT crops);
* ``vit_small`` (ViT-S/16, 384-d, HIPT's and DINO's default), ``vit_tiny``
  (ViT-Ti/16, 192-d) and any other timm name: timm models without
  classifier; ViTs are built with ``dynamic_img_size`` so the small local
  crops of DINO go through the same weights (position embeddings
  interpolated), and the state dict is the one the fixed-size encoder of
  :mod:`mmray.features.encoders` loads.

A pure PyTorch / timm module: no Ray.
"""

from __future__ import annotations

from torch import nn

from mmray.errors import UnknownNameError

TIMM_ALIASES = {"vit_small": "vit_small_patch16_224", "vit_tiny": "vit_tiny_patch16_224"}
SMALL_CNN_WIDTHS = (16, 32, 64, 128)


class SmallCNN(nn.Module):
    """``[B, C, *spatial] -> [B, widths[-1]]``: a stride-4 patchifying stem, then per stage a stride-2 conv (from
    the second stage on) and a stride-1 conv, each followed by GroupNorm and GELU, then global average pooling.
    ``spatial_dims`` 2 (images) or 3 (volumes).  The stem keeps the early activations (and the memory and time of
    DINO's ten views per sample) small, as ConvNeXt's does."""

    def __init__(self, *, in_chans: int = 3, widths: tuple[int, ...] = SMALL_CNN_WIDTHS, spatial_dims: int = 2,
                 groups: int = 8):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d

        def unit(c_in, c_out, **kw):
            return [conv(c_in, c_out, bias=False, **kw), nn.GroupNorm(min(groups, c_out), c_out), nn.GELU()]

        layers: list[nn.Module] = unit(in_chans, widths[0], kernel_size=4, stride=4)
        c = widths[0]
        for i, w in enumerate(widths):
            if i:
                layers += unit(c, w, kernel_size=3, stride=2, padding=1)
            layers += unit(w, w, kernel_size=3, stride=1, padding=1)
            c = w
        self.features = nn.Sequential(*layers)
        self.spatial_dims = spatial_dims
        self.num_features = self.embed_dim = c
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.features(x)
        return x.flatten(2).mean(-1)


def is_vit(name: str) -> bool:
    return TIMM_ALIASES.get(name, name).startswith(("vit_", "deit_", "eva", "beit"))


def build_image_backbone(name: str, *, input_px: int, drop_path_rate: float = 0.0) -> tuple[nn.Module, int]:
    """``(backbone, embed_dim)`` for 2D RGB crops (any size; ViTs at multiples of their patch size)."""
    import timm

    if name == "cnn_small":
        m = SmallCNN()
        return m, m.embed_dim
    arch = TIMM_ALIASES.get(name, name)
    if arch.split(".")[0] not in timm.list_models():
        raise UnknownNameError("pretraining backbone", name, ["cnn_small", *TIMM_ALIASES, "<any timm model>"])
    kwargs = {"pretrained": False, "num_classes": 0}
    if is_vit(name):
        kwargs.update(img_size=input_px, dynamic_img_size=True, drop_path_rate=drop_path_rate)
    elif drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        m = timm.create_model(arch, **kwargs)
    except TypeError:  # a model without drop_path_rate
        kwargs.pop("drop_path_rate", None)
        m = timm.create_model(arch, **kwargs)
    return m, int(m.num_features)
