"""The staged IS-GAN engine on torchreid's ``Engine`` (paper Sec. 4.1, "Training").

Stage policy (what runs, what trains, what is frozen):

=====  ============================  ==================================  ==========================
stage  trains                        frozen (requires_grad off, BN eval)  loss
=====  ============================  ==================================  ==========================
1      backbone, E_R                 E_U, G, D (not even run)             L_R
2      E_U, G, D_D/D_C               backbone, E_R (run under no_grad)    Eq. 8 without L_R
3      everything                    nothing                              Eq. 8
=====  ============================  ==================================  ==========================

One stage-2/3 iteration: one encoder pass; the auto-encoded, identity-shuffled and part-shuffled
inputs go through G as one concatenated batch; one D step on ``[real | fakes.detach()]``; then
one encoder/G step against D with D's parameters frozen (no wasted D gradients).

Stage 1 trains any torchreid model the same way (cross-entropy on each logit tensor, plus the
batch-hard triplet loss when the model returns ``(logits, features)``), so MGN and torchreid's
PCB are compared under identical data, sampler, optimiser and evaluation.
"""
import json
import math
import os
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from .. import compat
from ..config import config_hash
from ..data.build import IMAGENET_MEAN, IMAGENET_STD, train_transform
from ..errors import ISGANError
from ..losses import isgan as L
from ..losses.shuffle import part_shuffle, part_shuffle_mask, sample_partners
from ..visualize import denormalize, save_grid
from . import checkpoint as ckpt
from .evaluation import compute_distance_matrix, evaluate, extract_features

Engine = compat.torchreid_base().engine.Engine

# module attributes of ISGAN that each stage trains; models without them train whole in stage 1
STAGE_MODULES = {
    1: ("backbone", "encoder_r"),
    2: ("encoder_u", "generator", "discriminator"),
    3: ("backbone", "encoder_r", "encoder_u", "generator", "discriminator"),
}
GAN_MODULES = ("encoder_u", "generator", "discriminator")


class ISGANEngine(Engine):
    """Runs the configured stages with checkpoints, resume, logging and evaluation."""

    def __init__(self, cfg, datamanager, model, device):
        super().__init__(datamanager, use_gpu=device.type == "cuda")
        self.cfg = cfg
        self.device = device
        self.memory_format = torch.channels_last if cfg.TRAIN.CHANNELS_LAST else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)
        self.stage = None
        self.results = {}  # stage -> target -> metrics
        self.is_gan = all(hasattr(model, m) for m in GAN_MODULES)
        self.triplet = compat.torchreid_base().losses.TripletLoss(margin=cfg.LOSS.TRIPLET_MARGIN)
        self.skipped_steps = 0
        self.register_model("model", self.model, None, None)
        # TRAIN.AMP: float16 with loss scaling on CUDA, bfloat16 (no scaling needed) on CPU
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        scale = cfg.TRAIN.AMP and device.type == "cuda"
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=scale) for name in ("model", "discriminator")}

    # ------------------------------------------------------------------ stage policy

    def _modules(self, names):
        return [getattr(self.model, n) for n in names if hasattr(self.model, n)]

    def trainable_modules(self, stage):
        """The modules that ``stage`` updates."""
        if not hasattr(self.model, "encoder_r"):
            return [self.model]
        return self._modules(STAGE_MODULES[stage])

    def apply_stage_policy(self):
        """requires_grad and train/eval mode per the stage table; BN of frozen modules stays in eval."""
        trainable = self.trainable_modules(self.stage)
        self.model.train().requires_grad_(False)
        for m in trainable:
            m.requires_grad_(True)
        for child in self.model.children():
            if not any(child is m or m is self.model for m in trainable):
                child.eval()

    def set_model_mode(self, mode="train", names=None):
        """torchreid's mode switch, then the stage policy on top when training."""
        super().set_model_mode(mode, names)
        if mode == "train" and self.stage is not None:
            self.apply_stage_policy()

    def two_stepped_transfer_learning(self, epoch, fixbase_epoch, open_layers, model=None):
        """torchreid would re-open every layer here; the stage policy decides instead."""
        self.apply_stage_policy()

    def build_optimizers(self, stage):
        """Adam for the encoders and G, SGD for D, each over the modules ``stage`` trains; MultiStepLR each."""
        cfg, node = self.cfg.TRAIN, self.cfg.TRAIN[f"STAGE{stage}"]
        enc_gen = [m for m in self.trainable_modules(stage) if m is not getattr(self.model, "discriminator", None)]
        if stage == 3 and cfg.LR_MULT_GU != 1.0:
            slow = {id(p) for n in ("encoder_u", "generator") for p in getattr(self.model, n).parameters()}
            params = [p for m in enc_gen for p in m.parameters()]
            groups = [{"params": [p for p in params if id(p) not in slow], "lr": node.LR},
                      {"params": [p for p in params if id(p) in slow], "lr": node.LR * cfg.LR_MULT_GU}]
        else:
            groups = [{"params": [p for m in enc_gen for p in m.parameters()], "lr": node.LR}]
        opt = torch.optim.Adam(groups, lr=node.LR, betas=tuple(cfg.ADAM_BETAS), weight_decay=cfg.WEIGHT_DECAY,
                               amsgrad=cfg.AMSGRAD)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(node.MILESTONES), gamma=cfg.GAMMA)
        for registry in (self._models, self._optims, self._scheds):
            registry.clear()
        self.register_model("model", self.model, opt, sched)
        self.optimizer, self.scheduler = opt, sched
        self.optimizer_d = None
        if stage > 1:
            self.optimizer_d = torch.optim.SGD(self.model.discriminator.parameters(), lr=node.LR,
                                               momentum=cfg.D_MOMENTUM, weight_decay=cfg.D_WEIGHT_DECAY)
            sched_d = torch.optim.lr_scheduler.MultiStepLR(self.optimizer_d, milestones=list(node.MILESTONES),
                                                           gamma=cfg.GAMMA)
            self.register_model("discriminator", self.model.discriminator, self.optimizer_d, sched_d)

    # ------------------------------------------------------------------ one iteration

    def forward_backward(self, data):
        """One training step of the current stage; returns each loss term for logging."""
        imgs = data["img"].to(self.device, non_blocking=True, memory_format=self.memory_format)
        pids = data["pid"].to(self.device, non_blocking=True)
        if self.stage == 1:
            return self._step_stage1(imgs, pids)
        return self._step_gan(imgs, pids)

    def autocast(self):
        """Mixed-precision context for forward passes and losses (no-op unless TRAIN.AMP)."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.cfg.TRAIN.AMP)

    def _optimize(self, name, loss, optimizer):
        """Backward and step through the (possibly disabled) gradient scaler of ``name``."""
        scaler = self.scalers[name]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def _check_finite(self, terms):
        """Stop (or skip the step) on a non-finite loss, naming stage, epoch, iteration and term."""
        for name, value in terms.items():
            if not math.isfinite(value.item()):
                where = f"stage {self.stage}, epoch {self.epoch + 1}, iteration {self.batch_idx + 1}"
                if self.cfg.TRAIN.NONFINITE == "skip":
                    self.skipped_steps += 1
                    print(f"=> skipped a step: non-finite {name} = {value.item()} at {where}")
                    return False
                raise ISGANError(f"non-finite loss {name} = {value.item()} at {where}; lower "
                                 f"TRAIN.STAGE{self.stage}.LR, or set TRAIN.NONFINITE skip to skip such steps")
        return True

    def _step_stage1(self, imgs, pids):
        cfg = self.cfg.LOSS
        with self.autocast():
            outputs = self.model(imgs)
            logits, features = outputs if isinstance(outputs, tuple) else (outputs, None)
            logits = logits if isinstance(logits, (list, tuple)) else [logits]
            terms = {"L_R": L.identity_loss(logits, pids, cfg.ID_REDUCTION, cfg.LABEL_SMOOTH)}
            if features is not None:
                features = features if isinstance(features, (list, tuple)) else [features]
                terms["L_tri"] = cfg.LAMBDA_TRIPLET * torch.stack(
                    [self.triplet(f.float(), pids) for f in features]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self._check_finite(terms):
            self._optimize("model", sum(terms.values()), self.optimizer)
        acc = (logits[0].argmax(1) == pids).float().mean()
        return {**{k: v.item() for k, v in terms.items()}, "acc": acc.item()}

    def generate(self, imgs, pids):
        """Encode once, shuffle, and run G on the concatenated sets [Eq. 3, 4].

        Returns the fakes (n_sets*B, 3, H, W), the set names, mu/logvar (B, K, p_U), E_R logits.
        """
        model, loss_cfg = self.model, self.cfg.LOSS
        with torch.set_grad_enabled(self.stage == 3 and torch.is_grad_enabled()):
            trunk = model.backbone(imgs)  # (B, C4, H/16, W/16)
            id_feat, logits = model.encoder_r(trunk)  # (B, K*p_R), K x (B, C)
        if self.stage == 2:
            trunk = trunk.detach()
        nid, mu, logvar = model.encoder_u(trunk)  # (B, K*p_U), (B, K, p_U) x2
        partner = sample_partners(pids)
        id_partner = id_feat[partner]
        sets, ids = [], []
        if loss_cfg.LAMBDA_S > 0:
            sets += ["auto", "shuffled"]  # i == j and i != j in Eq. 3
            ids += [id_feat, id_partner]
        if loss_cfg.LAMBDA_PS > 0:
            sets.append("part_shuffled")  # Eq. 4
            ids.append(self._part_shuffle(id_feat, id_partner))
        if not sets:
            raise ISGANError("LOSS.LAMBDA_S and LOSS.LAMBDA_PS are both 0: stages 2-3 need at least one of them")
        n = len(sets)
        fakes = model.generator(torch.cat(ids), nid.repeat(n, 1), pids.repeat(n))  # (n*B, 3, H, W)
        return fakes, sets, mu, logvar, logits

    def _part_shuffle(self, id_feat, id_partner):
        mode = self.cfg.LOSS.PART_SHUFFLE
        if mode == "none":  # the authors' code: the mask is never drawn (bug B1)
            return id_feat
        branches = self.model.encoder_r.branches
        slots = branches.local_indices if mode == "local" else list(range(branches.num_features))
        mask = part_shuffle_mask(id_feat.size(0), branches.num_features, slots, device=id_feat.device)
        return part_shuffle(id_feat, id_partner, mask)

    def image_target(self, imgs):
        """Normalised input -> the space G's tanh output and D's inputs live in (LOSS.TARGET_SPACE)."""
        if self.cfg.LOSS.TARGET_SPACE == "tanh":
            return torch.tanh(imgs)
        mean = imgs.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = imgs.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (imgs * std + mean) * 2 - 1  # [-1, 1] RGB

    def _step_gan(self, imgs, pids):
        cfg = self.cfg.LOSS
        model, disc = self.model, self.model.discriminator
        B = imgs.size(0)
        target = self.image_target(imgs)
        with self.autocast():
            fakes, sets, mu, logvar, logits = self.generate(imgs, pids)
        n = len(sets)
        labels = pids.repeat(n)
        # sets whose D_C term counts [Eq. 7]: the shuffled ones, plus the auto-encoded with CLASS_ON_AUTO
        counted = [s != "auto" or cfg.CLASS_ON_AUTO for s in sets]
        cls_mask = torch.tensor(counted, device=imgs.device).repeat_interleave(B)  # (n*B,)
        n_cls = sum(counted)

        # ---- D step: real vs detached fakes in one pass [Eq. 6, 7]
        disc.requires_grad_(True)
        with self.autocast():
            patch, cls = disc(torch.cat([target.to(fakes.dtype), fakes.detach()]))  # (B + n*B, 1, h, w), (B + n*B, C)
            d_terms = {"D_dom": cfg.D_LAMBDA_D * L.discriminator_domain_loss(
                patch[:B], patch[B:], smooth=cfg.D_LABEL_SMOOTH, fake_weight=n)}
            d_cls = L.class_loss(cls[:B], pids)
            if n_cls:
                d_cls = d_cls + n_cls * L.class_loss(cls[B:][cls_mask], labels[cls_mask])
            d_terms["D_cls"] = cfg.D_LAMBDA_C * d_cls
        self.optimizer_d.zero_grad(set_to_none=True)
        if self._check_finite(d_terms):
            self._optimize("discriminator", sum(d_terms.values()), self.optimizer_d)

        # ---- encoder/G step against the updated D, with D frozen
        disc.requires_grad_(False)
        with self.autocast():
            patch, cls = disc(fakes)  # (n*B, 1, h, w), (n*B, C)
            recon = {s: L.reconstruction_loss(f, target) for s, f in zip(sets, fakes.chunk(n))}
            terms = {}
            if "auto" in recon:
                terms["L_S"] = cfg.LAMBDA_S * (recon["auto"] + recon["shuffled"])
            if "part_shuffled" in recon:
                terms["L_PS"] = cfg.LAMBDA_PS * recon["part_shuffled"]
            terms["L_U"] = cfg.LAMBDA_U[self.stage - 2] * L.kl_loss(mu, logvar, cfg.KL_REDUCTION)
            terms["L_D"] = cfg.LAMBDA_D * n * L.generator_domain_loss(patch)
            if n_cls:
                terms["L_C"] = cfg.LAMBDA_C * n_cls * L.class_loss(cls[cls_mask], labels[cls_mask])
            if self.stage == 3:
                terms["L_R"] = cfg.LAMBDA_R * L.identity_loss(logits, pids, cfg.ID_REDUCTION, cfg.LABEL_SMOOTH)
        self.optimizer.zero_grad(set_to_none=True)
        if self._check_finite(terms):
            self._optimize("model", sum(terms.values()), self.optimizer)
        disc.requires_grad_(True)
        summary = {k: v.item() for k, v in {**terms, **d_terms}.items()}
        summary.update({f"L1_{s}": v.item() for s, v in recon.items()})
        return summary

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, dataset_name="", query_loader=None, gallery_loader=None, dist_metric="euclidean",
                  normalize_feature=False, visrank=False, visrank_topk=10, save_dir="", use_metric_cuhk03=False,
                  ranks=(1, 5, 10), rerank=False):
        """torchreid's per-target evaluation, with flip-augmented features and the fast exact evaluator."""
        flip = self.cfg.TEST.FLIP
        t0 = time.time()
        qf, q_pids, q_camids = extract_features(self.model, query_loader, self.device, flip, normalize_feature)
        gf, g_pids, g_camids = extract_features(self.model, gallery_loader, self.device, flip, normalize_feature)
        n_images = (len(qf) + len(gf)) * (2 if flip else 1)
        result = evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=dist_metric, rerank=rerank,
                          use_metric_cuhk03=use_metric_cuhk03, ranks=tuple(ranks))
        result["test_images_per_s"] = n_images / max(time.time() - t0, 1e-9)
        print(f"** {dataset_name}: mAP {result['mAP']:.1%} "
              + " ".join(f"R{r} {result[f'rank{r}']:.1%}" for r in ranks))
        self.results.setdefault(self.stage, {})[dataset_name] = {
            k: float(v) for k, v in result.items() if k != "cmc"}
        if visrank:
            distmat = compute_distance_matrix(qf, gf, dist_metric).cpu().numpy()
            compat.torchreid_base().utils.visualize_ranked_results(
                distmat, self.datamanager.fetch_test_loaders(dataset_name), self.datamanager.data_type,
                width=self.datamanager.width, height=self.datamanager.height,
                save_dir=os.path.join(save_dir, f"visrank_{dataset_name}"), topk=visrank_topk)
        return result["rank1"], result["mAP"]

    def evaluate_targets(self, save_dir):
        """Evaluate on every target of the data manager; returns {target: metrics}."""
        t = self.cfg.TEST
        self.test(dist_metric=t.METRIC, normalize_feature=t.NORMALIZE, visrank=t.VISRANK,
                  visrank_topk=t.VISRANK_TOPK, save_dir=save_dir, use_metric_cuhk03=t.CUHK03_METRIC,
                  ranks=list(t.RANKS), rerank=t.RERANK)
        return self.results[self.stage]

    # ------------------------------------------------------------------ samples

    @torch.no_grad()
    def save_samples(self, path, num_ids=4):
        """Grid of real | reconstructed | identity-shuffled | part-shuffled images (RNG-neutral)."""
        dataset = self.train_loader.dataset
        by_pid = {}
        for index, item in enumerate(dataset.train):
            by_pid.setdefault(item[1], []).append(index)
        picks = [i for idx in list(by_pid.values())[:num_ids] if len(idx) > 1 for i in idx[:2]]
        if not picks:
            return
        read = compat.torchreid_base().utils.read_image
        imgs = torch.stack([self.datamanager.transform_te(read(dataset.train[i][0])) for i in picks]).to(self.device)
        pids = torch.tensor([dataset.train[i][1] for i in picks], device=self.device)
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.SEED)
            fakes, sets, _, _, _ = self.generate(imgs, pids)
        self.model.train(was_training)
        if was_training:
            self.apply_stage_policy()
        columns = [denormalize(imgs, IMAGENET_MEAN, IMAGENET_STD)]
        columns += [self.image_to_unit(f) for f in fakes.chunk(len(sets))]
        save_grid(path, [c.cpu() for c in columns], titles=["real"] + sets)

    def image_to_unit(self, fake):
        """Inverse of :meth:`image_target`, to [0, 1] RGB for display."""
        if self.cfg.LOSS.TARGET_SPACE == "tanh":
            return denormalize(torch.atanh(fake.clamp(-0.999, 0.999)), IMAGENET_MEAN, IMAGENET_STD)
        return ((fake + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ the stage loop

    def run_stages(self, stages=None):
        """Run the configured stages (resuming where a previous run stopped); returns all results."""
        cfg = self.cfg
        stages = list(stages or cfg.TRAIN.STAGES)
        if not self.is_gan and stages != [1]:
            raise ISGANError(f"{type(self.model).__name__} has no E_U/G/D: train it with TRAIN.STAGES [1]")
        for stage in stages:
            self.run_stage(stage)
        self.write_results()
        return self.results

    def enter_stage(self, stage):
        """Make ``stage`` current: its optimisers, its train transform, its freezing policy, epoch 0."""
        self.stage = stage
        self.build_optimizers(stage)
        if self.train_loader is not None:  # workers start per epoch: they see the new transform
            self.train_loader.dataset.transform = train_transform(self.cfg, stage)
        self.epoch = self.batch_idx = 0
        self.apply_stage_policy()

    def run_stage(self, stage):
        """Train one stage from its latest checkpoint, the previous stage's, or scratch; then evaluate."""
        cfg, out = self.cfg, self.cfg.OUTPUT_DIR
        node = cfg.TRAIN[f"STAGE{stage}"]
        self.enter_stage(stage)
        start_epoch = self._restore(stage)
        save_dir = ckpt.stage_dir(out, stage)
        done = start_epoch >= node.EPOCHS and stage in self.results
        print(f"=> Stage {stage}: epochs {start_epoch + 1}-{node.EPOCHS}, lr {node.LR:g}"
              + (" (already complete)" if done else ""))
        if not done:
            self.writer = SummaryWriter(log_dir=save_dir)
            self.max_epoch = node.EPOCHS
            for self.epoch in range(start_epoch, node.EPOCHS):
                self.train(print_freq=cfg.TRAIN.PRINT_FREQ)
                self._after_epoch(stage, node)
            self.evaluate_targets(save_dir)
            self.save(stage, node.EPOCHS, ckpt.latest_path(out, stage))  # now with the results
            ckpt.keep_epoch(out, stage, node.EPOCHS)
            self.writer.close()
            self.writer = None

    def _after_epoch(self, stage, node):
        epoch = self.epoch + 1
        out = self.cfg.OUTPUT_DIR
        sample_freq = self.cfg.TRAIN.SAMPLE_FREQ
        if stage > 1 and (epoch == node.EPOCHS or (sample_freq and epoch % sample_freq == 0)):
            self.save_samples(os.path.join(ckpt.stage_dir(out, stage), "samples", f"epoch{epoch:03d}.png"))
        if epoch % self.cfg.TRAIN.RESUME_FREQ and epoch < node.EPOCHS:
            return
        self.save(stage, epoch, ckpt.latest_path(out, stage))
        if epoch < node.EPOCHS and epoch % self.cfg.TRAIN.CHECKPOINT_FREQ == 0:
            ckpt.keep_epoch(out, stage, epoch)

    def save(self, stage, epoch, path):
        """Checkpoint everything needed to resume exactly."""
        state = {
            "stage": stage,
            "epoch": epoch,
            "state_dict": self.model.state_dict(),  # the key torchreid's loaders read
            "optimizers": {n: o.state_dict() for n, o in self._optims.items()},
            "schedulers": {n: s.state_dict() for n, s in self._scheds.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items() if s.is_enabled()},
            "rng": ckpt.rng_state(),
            "config_hash": config_hash(self.cfg),
            "num_classes": self.datamanager.num_train_pids,
            "results": self.results.get(stage, {}) if epoch >= self.cfg.TRAIN[f"STAGE{stage}"].EPOCHS else {},
        }
        ckpt.save_checkpoint(state, path)

    def _restore(self, stage):
        """Resume this stage, or initialise from the previous stage; returns the first epoch to run."""
        out = self.cfg.OUTPUT_DIR
        path = ckpt.latest_path(out, stage)
        if os.path.isfile(path):
            state = ckpt.load_checkpoint(path)
            if state.get("config_hash") != config_hash(self.cfg):
                raise ISGANError(f"{path} was written with a different config (hash {state.get('config_hash')} vs "
                                 f"{config_hash(self.cfg)}); use a new OUTPUT_DIR, or delete {os.path.dirname(path)} "
                                 f"to restart stage {stage}")
            self.model.load_state_dict(ckpt.model_state(state))
            for name, sd in state["optimizers"].items():
                self._optims[name].load_state_dict(sd)
            for name, sd in state["schedulers"].items():
                self._scheds[name].load_state_dict(sd)
            for name, sd in state.get("scalers", {}).items():
                self.scalers[name].load_state_dict(sd)
            ckpt.set_rng_state(state["rng"])
            if state["results"]:
                self.results[stage] = state["results"]
            print(f"=> resumed stage {stage} from {path} (epoch {state['epoch']})")
            return state["epoch"]
        if stage > 1:
            prev = ckpt.latest_path(out, stage - 1)
            source = prev if os.path.isfile(prev) else self.cfg.TRAIN.INIT_WEIGHTS
            if not source:
                raise ISGANError(f"stage {stage} starts from stage {stage - 1}'s weights, but {prev} does not exist; "
                                 f"run stage {stage - 1} first (TRAIN.STAGES) or set TRAIN.INIT_WEIGHTS to a "
                                 f"checkpoint")
            state = ckpt.load_checkpoint(source)
            if source == prev and state["epoch"] < self.cfg.TRAIN[f"STAGE{stage - 1}"].EPOCHS:
                raise ISGANError(f"stage {stage - 1} is unfinished ({source} is at epoch {state['epoch']}); "
                                 f"finish it first: add {stage - 1} to TRAIN.STAGES")
            ckpt.load_weights(self.model, ckpt.model_state(state))
            print(f"=> stage {stage} initialised from {source}")
        return 0

    def write_results(self):
        """results.json in OUTPUT_DIR: {stage: {target: metrics}}, keeping stages of earlier invocations."""
        path = os.path.join(self.cfg.OUTPUT_DIR, "results.json")
        results = {}
        if os.path.isfile(path):
            with open(path) as f:
                results = json.load(f)
        results.update({f"stage{s}": r for s, r in self.results.items()})
        ckpt.write_json(path, dict(sorted(results.items())))
