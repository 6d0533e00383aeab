"""IS-GAN's sample grids during training: a hook that draws G's outputs for a few training images.

The tool layer registers it (:func:`isgan_torchreid.cli.training_hooks`); the engine knows nothing of it.
"""
import os

import torch

from .. import compat
from ..data.build import IMAGENET_MEAN, IMAGENET_STD
from ..engine.hooks import HookBase, TensorBoardWriter
from ..losses.isgan import reconstruction_loss
from .canvas import (Tile, denormalize, display_scale, font_size_for, market_label, parse_market_name, part_mask_bar,
                     save_png, sheet, to_array, to_pil)

__all__ = ["SampleGrids"]

GRID_TITLES = {"auto": "G: auto", "shuffled": "G: id-shuffled", "part_shuffled": "G: part-shuffled",
               "crossed": "G: id-crossed"}

CROSSED_CAPTION = ("id-crossed = another identity of the batch + own nuisance (LOSS.LAMBDA_X, LAMBDA_CODE, "
                   "LAMBDA_R_FAKE). ")


class SampleGrids(HookBase):
    """In stages 2-3, a labelled grid every ``freq`` epochs (0: only at the end) in
    ``stage{n}/samples/epoch{e}.png`` and in TensorBoard (tag ``samples``); RNG-neutral, so resume stays exact.

    One row per training sample (two of each of the first ``num_ids`` identities with two or more images):
    the image with its pid and camera, the partner it was paired with for identity shuffling, G's auto-encoded,
    identity-shuffled and part-shuffled outputs [Eq. 3, 4], and the part mask (which features S swapped).
    With each grid, the eval-mode L1 of each fake set on these images (``eval_L1/<set>``, in G's target space as
    the training L1 terms) goes to TensorBoard.
    """

    def __init__(self, freq: int, num_ids: int = 4):
        self.freq = freq
        self.num_ids = num_ids

    def after_epoch(self):
        e = self.engine
        epoch = e.epoch + 1
        if e.stage not in e.objective.sample_stages:
            return
        if epoch == e.max_epoch or (self.freq and epoch % self.freq == 0):
            picture = self.draw()
            if picture is None:
                return
            save_png(picture, os.path.join(e.plan.layout.stage_dir(e.stage), "samples", f"epoch{epoch:03d}.png"))
            for hook in e.hooks:
                if isinstance(hook, TensorBoardWriter):
                    hook.add_image("samples", to_array(picture))
                    for name, value in self.eval_l1.items():
                        hook.add_scalar(f"eval_L1/{name}", value)

    def _batch(self):
        """Two images of each of the first ``num_ids`` identities with two or more: normalised (n, 3, H, W),
        training pids (n,), labels ('pid P, cam C' from Market-style names)."""
        e = self.engine
        train = e.train_loader.dataset.train
        by_pid = {}
        for index, item in enumerate(train):
            by_pid.setdefault(item[1], []).append(index)
        picks = [i for idx in [v for v in by_pid.values() if len(v) > 1][:self.num_ids] for i in idx[:2]]
        if not picks:
            return None, None, None
        read = compat.torchreid_base().utils.read_image
        imgs = torch.stack([e.datamanager.transform_te(read(train[i][0])) for i in picks])
        labels = [market_label(train[i][0]) if parse_market_name(train[i][0])
                  else f"pid {train[i][1]}, cam {train[i][2] + 1}" for i in picks]
        return imgs, torch.tensor([train[i][1] for i in picks]), labels

    def draw(self):
        """The grid as a picture (None when no identity has two training images)."""
        tiles = self.tiles()
        if tiles is None:
            return None
        rows, sets = tiles
        e = self.engine
        titles = ["real", "partner"] + [GRID_TITLES[name] for name in sets]
        titles += ["parts taken"] if len(rows[0]) > len(titles) else []
        parts = list(e.model.encoder_r.branches.parts)
        caption = ("partner: the same-identity image whose identity features are shuffled in. G's outputs: "
                   "auto = own identity + own nuisance features; id-shuffled = partner's identity + own nuisance "
                   "[Eq. 3]; part-shuffled = own identity with the orange features taken from the partner, own "
                   f"nuisance [Eq. 4]. {CROSSED_CAPTION if 'crossed' in sets else ''}Bars: one per part branch of "
                   f"MODEL.PARTS {parts} (a frame: its global feature; inside: its stripes, top to bottom). Eval "
                   "mode (E_U's mean), the config's seed.")
        return sheet(rows, title=f"stage {e.stage}, epoch {e.epoch + 1}/{e.max_epoch}: training samples",
                     column_titles=titles, row_labels=[f"row {b + 1}" for b in range(len(rows))], caption=caption,
                     font_size=font_size_for(rows[0][0].image.height))

    @torch.no_grad()
    def tiles(self):
        """(tiles of the grid, one list per sample; the names of the fake sets shown), or None when no identity
        has two training images."""
        e = self.engine
        imgs, pids, labels = self._batch()
        if imgs is None:
            return None
        imgs, pids = imgs.to(e.device), pids.to(e.device)
        model = e.model
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[e.device] if e.device.type == "cuda" else []):
            torch.manual_seed(e.plan.seed)
            gen = e.objective.generate(imgs, pids, e.stage, net=e.model)  # the plain model: rank 0 alone runs this
        model.train(was_training)
        if was_training:
            e.apply_stage_policy()
        generated = dict(zip(gen.sets, gen.fakes.chunk(len(gen.sets))))  # set -> (n, 3, H, W) in G's space
        target = e.objective.image_target(imgs)
        self.eval_l1 = {name: reconstruction_loss(f, target).item() for name, f in generated.items()
                        if name != "crossed"}  # no image to match
        scale = display_scale(imgs.size(-2))
        real = denormalize(imgs, IMAGENET_MEAN, IMAGENET_STD)
        fakes = {name: e.objective.image_to_unit(f) for name, f in generated.items()}
        parts = e.model.encoder_r.branches.parts
        bar_height, cell = real.size(-2) * scale, max(8, 5 * scale)
        rows = []
        for b, p in enumerate(gen.partner.tolist()):
            row = [Tile(to_pil(real[b], scale), labels[b]), Tile(to_pil(real[p], scale), f"row {p + 1}")]
            row += [Tile(to_pil(fakes[name][b], scale)) for name in gen.sets]
            if gen.part_mask is not None:
                row.append(Tile(part_mask_bar(parts, gen.part_mask[b].tolist(), bar_height, cell)))
            rows.append(row)
        return rows, gen.sets
