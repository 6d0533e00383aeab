"""Generator G (paper Sec. 3.3 and 4.1): id feature + nid feature + noise + one-hot label -> image.

As in the authors' code (reference notes 1.5, D5): an FC layer to a 512x1x1 map, then seven
transposed convolutions. The first has kernel (H/64, W/64) and gives an H/64 x W/64 map; six
x2 upsamplings reach H x W. The output goes through Tanh, so targets must live in [-1, 1].

Other sizes: when 64 does not divide both H and W, G makes as many x2 upsamplings u as 2^u divides both
(at least 4, so H and W must be multiples of 16) and leaves out the first of the upsampling blocks: at
64x32, five (a 512-channel 2x1 map, then 512, 256, 128, 64 and 3 channels). ``base_channels``
(MODEL.G_WIDTH, 512) scales every hidden channel count by base_channels / 512.

Initialisation (MODEL.G_INIT). ``fan_in``: each weight ~ N(0, gain^2 / fan), where fan is the number of
inputs one output unit sums: in_features for the FC, cin for the first transposed conv (its input is
1x1, so each output pixel sees one kernel tap per channel) and cin * (4/2)^2 for the k4 s2 upsamplings;
gain sqrt(2 / (1 + 0.2^2)) before LeakyReLU(0.2) and 1 before the Tanh, so the pre-Tanh map starts
with a standard deviation near 0.7, inside Tanh's linear range. ``reference``: the authors' Kaiming
init, whose fan for a transposed conv is taken from the weight's second dimension (cout * k * k): the
last layer's fan is 3 * 16 = 48 against 64 * 4 = 256 inputs summed, the pre-Tanh standard deviation
is about 2.4 and about 30% of the first images' pixels are saturated (|x| > 0.98).

Stripe conditioning (MODEL.G_STRIPES; off in the paper, where G reads the codes as one vector only). E_R's
identity code and E_U's nuisance code are K part features each (:class:`~isgan_torchreid.models.branches.
PartBranches`, layout ``parts``), each stripe feature pooled from a band of rows of the person. For each code in
``stripe_codes`` G also draws every stripe feature into the rows of its band: after each hidden block whose map
has at least max(parts) rows, a linear map of each stripe feature (one per code and block, shared by the
stripes) is added to the rows that stripe covers (nearest resizing of the n stripes to the map's rows),
broadcast over the columns. The codes still enter through the FC as in the paper; the added path tells G where
each stripe's look (a shirt, the trousers; the legs' pose) belongs, which the vector path must otherwise learn
from the data.

Layout grid (MODEL.EU_GRID; off in the paper). When E_U's nuisance code also holds the features of a rows x
cols grid of cells (:class:`~isgan_torchreid.models.encoders.NuisanceEncoder`), G adds a linear map of each
cell's feature (one per block, shared by the cells) to the block of the map that cell covers (nearest resizing
of the grid to the map), after each hidden block whose map has at least ``rows`` rows: the nuisance code says
where things are in two dimensions, not only per stripe.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .branches import kaiming_init_, part_layout

__all__ = ["STRIPE_CODES", "upsamplings", "check_image_size", "transposed_fan_in", "stripe_features", "Generator"]

INITS = ("fan_in", "reference")
STRIPE_CODES = ("identity", "nuisance")
_LEAKY_GAIN = nn.init.calculate_gain("leaky_relu", 0.2)  # sqrt(2 / 1.04)

# channels of the hidden maps after the first transposed conv and after each of the first five of the six
# x2 upsamplings, at width 512 (the sixth gives the 3 RGB channels)
_CHANNELS = (512, 512, 512, 256, 128, 64)
MIN_UPSAMPLINGS = 4


def upsamplings(height: int, width: int) -> int:
    """The x2 upsamplings G makes for an H x W image: the largest u <= 6 with 2^u dividing H and W."""
    u = 0
    while u < 6 and height % 2 ** (u + 1) == 0 and width % 2 ** (u + 1) == 0:
        u += 1
    return u


def check_image_size(height: int, width: int) -> None:
    """Raise ValueError unless height and width are positive multiples of 16 (G upsamples at least x16)."""
    if height <= 0 or width <= 0 or upsamplings(height, width) < MIN_UPSAMPLINGS:
        raise ValueError(
            f"image size {height}x{width} is not supported by the generator; set DATA.HEIGHT and "
            f"DATA.WIDTH to positive multiples of 16 (e.g. 384x128, 256x128, 128x64 or 64x32)"
        )


def _up_block(cin: int, cout: int, kernel, stride: int, padding: int, dropout: float) -> nn.Module:
    """ConvT (no bias) + BN + LeakyReLU(0.2), followed by Dropout when ``dropout`` > 0."""
    layers = [
        nn.ConvTranspose2d(cin, cout, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def transposed_fan_in(conv: nn.ConvTranspose2d, input_size) -> int:
    """Inputs summed by one interior output pixel of ``conv`` on an (h, w) input: cin * taps_h * taps_w.

    A transposed conv with kernel k and stride s reaches each output pixel with ceil(k / s) kernel taps
    per dimension (at most the input's extent): 4 = 2 x 2 taps for k4 s2, 1 for any kernel on a 1x1 map.
    """
    taps = [min(math.ceil(k / s), n) for k, s, n in zip(conv.kernel_size, conv.stride, input_size)]
    return conv.in_channels * taps[0] * taps[1]


def stripe_features(parts: Sequence[int]) -> List[Tuple[int, List[int]]]:
    """[(n, indices of its n stripe features in the K-feature code)] for each branch n > 1 of ``parts``
    (:func:`~isgan_torchreid.models.branches.part_layout`)."""
    return [(len(stripes), stripes) for _, stripes in part_layout(parts) if stripes]


class Generator(nn.Module):
    """G: cat(id, nid, noise, one_hot(label)) -> FC -> 1 + u transposed convs (u = 6 at multiples of 64) -> Tanh.

    With ``class_input=False`` G reads no label: cat(id, nid, noise). In training every label G is given is
    the identity its identity code came from (shuffling keeps the identity), so the one-hot is a second,
    easier route to the training identities' looks that a test identity, decoded with a predicted class,
    cannot take. ``stripe_codes`` ("identity", "nuisance" or both): G also draws each stripe feature of those
    codes into its rows (module doc); ``parts`` is the codes' part layout.
    """

    def __init__(
        self,
        num_classes: int,
        id_dim: int = 2048,
        nid_dim: int = 512,
        noise_dim: int = 128,
        height: int = 384,
        width: int = 128,
        dropout: float = 0.2,
        init: str = "fan_in",
        class_input: bool = True,
        base_channels: int = 512,
        parts: Sequence[int] = (1, 2, 3),
        stripe_codes: Sequence[str] = (),
        grid: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        check_image_size(height, width)
        unknown = set(stripe_codes) - set(STRIPE_CODES)
        if unknown:
            raise ValueError(f"unknown codes {sorted(unknown)} for G's stripe conditioning; use {STRIPE_CODES}")
        self.stripes = stripe_features(parts) if stripe_codes else []
        if stripe_codes and not self.stripes:
            raise ValueError(f"G's stripe conditioning (MODEL.G_STRIPES) needs a part branch with stripes; parts "
                             f"{tuple(parts)} have none: set MODEL.PARTS e.g. [1, 2, 3] or MODEL.G_STRIPES none")
        if init not in INITS:
            raise ValueError(f"unknown generator init {init!r} (MODEL.G_INIT); use one of {', '.join(INITS)}")
        self.num_classes = num_classes
        self.noise_dim = noise_dim
        self.class_input = class_input
        ups = upsamplings(height, width)
        channels = [max(1, c * base_channels // 512) for c in _CHANNELS[6 - ups:]]  # first map, then u - 1 hidden
        self.fc = nn.Sequential(
            nn.Linear(id_dim + nid_dim + noise_dim + (num_classes if class_input else 0), channels[0]),
            nn.BatchNorm1d(channels[0]),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Dropout(dropout),
        )
        # 1x1 -> H/2^u x W/2^u
        blocks = [_up_block(channels[0], channels[0], (height >> ups, width >> ups), 1, 0, dropout)]
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            # the last hidden upsampling has no dropout (as in the reference)
            blocks.append(_up_block(cin, cout, 4, 2, 1, dropout if i < len(channels) - 2 else 0.0))
        blocks.append(nn.Sequential(nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1, bias=False), nn.Tanh()))
        self.deconvs = nn.Sequential(*blocks)
        # stripe conditioning: block i's output has channels[i] channels and (height >> ups) * 2^i rows
        self.num_features = sum(1 + len(stripes) for _, stripes in part_layout(parts))  # K
        self.grid = tuple(grid) if grid else None
        num_cells = self.grid[0] * self.grid[1] if self.grid else 0
        self.nid_part_dim = nid_dim // (self.num_features + num_cells)  # p_U: nid = K part features + cells

        def levels(rows_needed):  # (name, channels) of the hidden blocks whose map has at least rows_needed rows
            return [(str(i), c) for i, c in enumerate(channels) if (height >> ups) << i >= rows_needed]

        dims = {"identity": id_dim // self.num_features, "nuisance": self.nid_part_dim}
        stripe_levels = levels(max((n for n, _ in self.stripes), default=0))
        self.stripe_proj = nn.ModuleDict({
            code: nn.ModuleDict({i: nn.Linear(dims[code], c) for i, c in stripe_levels}) for code in stripe_codes
        })
        self.grid_proj = nn.ModuleDict({
            i: nn.Linear(self.nid_part_dim, c) for i, c in (levels(self.grid[0]) if self.grid else [])
        })
        kaiming_init_(self)  # BatchNorm N(1, 0.02); the weights below for "fan_in"
        if init == "fan_in":
            self._fan_in_init(height >> ups, width >> ups)
        projs = [proj for code in self.stripe_proj.values() for proj in code.values()] + list(self.grid_proj.values())
        for proj in projs:  # unit gain: adds about as much as the block's own activations
            nn.init.normal_(proj.weight, 0.0, 1 / math.sqrt(proj.in_features))
            nn.init.zeros_(proj.bias)

    def _fan_in_init(self, h0: int, w0: int) -> None:
        """Weights ~ N(0, (gain / sqrt(fan))^2), fan the inputs each output unit sums (module doc)."""
        linear = self.fc[0]
        nn.init.normal_(linear.weight, 0.0, _LEAKY_GAIN / math.sqrt(linear.in_features))
        size = (1, 1)  # the first transposed conv sees a 1x1 map
        convs = [block[0] for block in self.deconvs]
        for i, conv in enumerate(convs):
            gain = 1.0 if i == len(convs) - 1 else _LEAKY_GAIN  # the last feeds Tanh
            nn.init.normal_(conv.weight, 0.0, gain / math.sqrt(transposed_fan_in(conv, size)))
            size = (h0, w0) if i == 0 else (size[0] * 2, size[1] * 2)

    def forward(
        self,
        id_feat: torch.Tensor,
        nid_feat: torch.Tensor,
        labels: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """(B, id_dim), (B, nid_dim), (B,) labels [, (B, noise_dim)] -> (B, 3, H, W) in [-1, 1].

        When ``noise`` is None it is drawn from N(0, 1) with ``generator`` (torch's default if None).
        ``labels`` are ignored by a G built with ``class_input=False`` (MODEL.G_CLASS_INPUT).
        """
        if noise is None:
            noise = torch.randn(
                id_feat.shape[0], self.noise_dim,
                generator=generator, device=id_feat.device, dtype=id_feat.dtype,
            )
        codes = [id_feat, nid_feat, noise]
        if self.class_input:
            codes.append(F.one_hot(labels, self.num_classes).to(id_feat.dtype))  # (B, C)
        x = self.fc(torch.cat(codes, dim=1))[:, :, None, None]  # (B, c0, 1, 1), c0 = 512 at G_WIDTH 512
        if not self.stripe_proj and not self.grid_proj:
            return self.deconvs(x)  # (B, 3, H, W)
        B, K, p = x.shape[0], self.num_features, self.nid_part_dim
        flat = {"identity": id_feat, "nuisance": nid_feat[:, :K * p]}
        parts = {code: flat[code].reshape(B, K, -1) for code in self.stripe_proj}  # (B, K, d)
        cells = nid_feat[:, K * p:].reshape(B, *(self.grid or (0, 0)), p)  # (B, rows, cols, p_U)
        for i, block in enumerate(self.deconvs):
            x = block(x)  # (B, c_i, h_i, w_i)
            for code, projs in self.stripe_proj.items():
                if str(i) in projs:
                    x = x + self._stripe_map(parts[code], projs[str(i)], x.shape[2])  # + (B, c_i, h_i, 1)
            if str(i) in self.grid_proj:
                grid_map = self.grid_proj[str(i)](cells).permute(0, 3, 1, 2)  # (B, c_i, rows, cols)
                x = x + F.interpolate(grid_map, size=x.shape[2:], mode="nearest")  # + (B, c_i, h_i, w_i)
        return x  # (B, 3, H, W)

    def _stripe_map(self, parts: torch.Tensor, proj: nn.Linear, rows: int) -> torch.Tensor:
        """(B, K, d) part features -> (B, c, rows, 1): each branch's stripes projected and resized (nearest) to
        ``rows``, summed over the branches."""
        out = 0
        for _, indices in self.stripes:
            stripes = proj(parts[:, indices]).transpose(1, 2)[..., None]  # (B, c, n, 1)
            out = out + F.interpolate(stripes, size=(rows, 1), mode="nearest")
        return out
