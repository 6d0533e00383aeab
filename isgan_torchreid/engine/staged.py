"""The staged training loop on torchreid's ``Engine`` (paper Sec. 4.1, "Training").

:class:`StagedEngine` runs the configured stages of an objective (:mod:`.objective`: what a step computes,
which modules a stage trains) and calls hooks (:mod:`.hooks`: checkpoints, sample grids, logging, results)
around its stages, epochs and steps. From torchreid's ``Engine`` it keeps the model registry
(``set_model_mode``, ``update_lr``), the test loop over the targets and ``visualize_ranked_results``;
it brings its own per-step loop, because hooks act after each step.

Under torchrun (:mod:`.distributed`) every process runs this loop on its share of each batch; the modules a
stage trains are wrapped in DDP when the stage is entered; rank 0 alone runs the hooks (files, logs) and the
evaluation, while the others wait. Every epoch reseeds the random streams from (SEED, stage, epoch, rank),
so a resumed run needs no saved RNG state and draws what the uninterrupted run drew.
"""
import os
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .. import comm, compat
from ..errors import ISGANError
from ..models.images import normalize_uint8
from . import checkpoint as ckpt
from . import distributed
from .evaluation import compute_distance_matrix, evaluate, extract_features
from .hooks import HookBase, default_hooks
from .objective import build_objective
from .optim import NonfiniteLog, OptimizerUpdate, build_optimizer
from .plan import RunPlan

Engine = compat.torchreid_base().engine.Engine


class StagedEngine(Engine):
    """Trains the stages of ``cfg.TRAIN.STAGES`` (resuming where a previous run stopped), then evaluates each.

    The config is read here, once: into the objective (:func:`~.objective.build_objective`) and the run's plan
    (``self.plan``, :class:`~.plan.RunPlan`: the run folder, the stage schedule, the evaluation settings), which the
    loop and the hooks read. ``hooks``: :func:`~.hooks.default_hooks` when None. ``extra_state``: entries every
    checkpoint also holds (the tool layer's ``encoder_spec``, so that an encoder loads from a checkpoint without
    its run folder). ``skipped_images``: the unreadable images the data manager's datasets left out
    (:class:`~isgan_torchreid.data.build.Data`), reported with the results."""

    def __init__(self, cfg, datamanager, model, device, hooks: Optional[Sequence[HookBase]] = None,
                 extra_state: Optional[dict] = None, skipped_images: Optional[Dict[str, List[str]]] = None):
        super().__init__(datamanager, use_gpu=device.type == "cuda")
        self.plan = RunPlan.from_config(cfg)
        self.device = device
        self.num_classes = datamanager.num_train_pids
        model = distributed.sync_batchnorm(model, cfg.TRAIN.SYNC_BN)
        self.objective = build_objective(cfg, model, device)
        self.precision = self.objective.precision
        self.model = model.to(device, memory_format=self.precision.memory_format)
        self.extra_state = dict(extra_state or {})
        self.skipped_images = dict(skipped_images or {})  # {"<dataset>/<split>": [paths]}
        self.stage = None
        self.optimizers = {}
        self.results = {}  # stage (or "test") -> target -> metrics
        self.skipped_steps = 0
        self.nonfinite = NonfiniteLog()  # the updates' non-finite checks, read at logging points
        self.summary = {}  # the last step's loss terms, 0-d tensors on the device
        self.batch_size = 0  # the last step's images, over all processes
        self.num_batches = self.max_epoch = self.batch_idx = 0
        self.hooks: List[HookBase] = []
        self.register_hooks(default_hooks(cfg) if hooks is None else hooks)

    def register_hooks(self, hooks: Sequence[HookBase]) -> None:
        """Append hooks; they are called in registration order. Under torchrun, the other ranks leave out the
        hooks that rank 0 alone runs (``main_process_only``)."""
        for hook in hooks:
            if hook.main_process_only and not comm.is_main_process():
                continue
            hook.engine = self
            self.hooks.append(hook)

    def _call(self, moment: str) -> None:
        for hook in self.hooks:
            getattr(hook, moment)()

    # ------------------------------------------------------------------ stage policy

    def trainable_modules(self, stage: int):
        """The modules that ``stage`` updates."""
        return self.objective.trainable_modules(stage)

    def apply_stage_policy(self) -> None:
        """requires_grad and train/eval mode per the objective's stage table; frozen modules' BN stays in eval."""
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

    def enter_stage(self, stage: int) -> None:
        """Make ``stage`` current: its optimisers, its train transform, its freezing policy, epoch 0; under
        torchrun, DDP wrappers of the modules it trains."""
        if stage not in self.objective.stages:
            raise ISGANError(f"{type(self.model).__name__} has no stage {stage} (it has no E_U/G/D): train it with "
                             f"TRAIN.STAGES {list(self.objective.stages)} or a subset")
        self.stage = stage
        specs = self.objective.optimizers(stage)
        self.optimizers = {name: build_optimizer(spec, self.precision.grad_scaler) for name, spec in specs.items()}
        # torchreid's registry keeps a module beside each optimiser: the one it updates, else the whole model
        compat.set_engine_models(self, {
            name: (specs[name].modules[0] if len(specs[name].modules) == 1 else self.model, opt.optimizer,
                   opt.scheduler) for name, opt in self.optimizers.items()})
        self.updates = {name: OptimizerUpdate(opt, self.nonfinite) for name, opt in self.optimizers.items()}
        if self.train_loader is not None:  # its samples take the stage's transform (data.sampler.SampleKeys)
            if comm.is_main_process():  # torchreid's transform banner is the data manager's, once
                augmentations = [a.replace("_", " ") for a in self.plan.augmentations[stage]]
                print(f"=> stage {stage} trains with {' and '.join(augmentations) or 'no augmentation'}")
                self.objective.check_training_data(self.train_loader.dataset.train, stage)
        self.epoch = self.batch_idx = 0
        self.max_epoch = self.plan.epochs[stage]
        self.apply_stage_policy()
        self.objective.net = self.model  # the previous stage's wrappers go (their gradient hooks with them)
        self.objective.net = distributed.data_parallel(self.model, self.objective.parallel_modules(stage),
                                                       self.device)

    # ------------------------------------------------------------------ one step

    def forward_backward(self, data) -> Dict[str, Tensor]:
        """One training step of the current stage; returns each loss term for logging (0-d tensors on the
        device: the step does not wait for the device, :mod:`.scalars`)."""
        imgs = data["img"].to(self.device, non_blocking=True, memory_format=self.precision.memory_format)
        if imgs.dtype == torch.uint8:  # DATA.UINT8_BATCHES: normalised here, on the device
            imgs = normalize_uint8(imgs)
        pids = data["pid"].to(self.device, non_blocking=True)
        self.batch_size = imgs.size(0) * comm.get_world_size()
        self.nonfinite.where = (self.stage, self.epoch, self.batch_idx)
        return self.objective.step(imgs, pids, self.stage, self.updates)

    def at_logging_point(self) -> bool:
        """Whether the current step is one at which the step values are read: every TRAIN.PRINT_FREQ steps and
        the epoch's last."""
        step = self.batch_idx + 1
        return step % self.plan.print_freq == 0 or step == self.num_batches

    def check_nonfinite(self) -> None:
        """The updates skipped since the last check for a non-finite loss (all ranks alike): stop at the first
        (TRAIN.NONFINITE error), or count and report each (skip), naming stage, epoch, iteration and term."""
        for (stage, epoch, batch_idx), term, value in self.nonfinite.collect():
            where = f"stage {stage}, epoch {epoch + 1}, iteration {batch_idx + 1}"
            if self.plan.nonfinite != "skip":
                raise ISGANError(f"non-finite loss {term} = {value} at {where}; lower TRAIN.STAGE{stage}.LR, "
                                 f"or set TRAIN.NONFINITE skip to skip such steps")
            self.skipped_steps += 1
            print(f"=> skipped a step: non-finite {term} = {value} at {where}")

    def seed_epoch(self) -> None:
        """Seed this epoch's batches (the same on every rank) and random streams (this rank's) from SEED."""
        seed = comm.epoch_seed(self.plan.seed, self.stage, self.epoch, comm.get_rank())
        compat.torchreid_base().utils.set_random_seed(seed)  # python, numpy, torch (CUDA too)
        self.train_loader.sampler.set_epoch(self.epoch, self.stage)

    def train_epoch(self) -> None:
        """One epoch of the current stage: a step per batch (hooks after each), then the schedulers."""
        self.seed_epoch()
        self.objective.before_epoch(self.stage, self.epoch)
        self.set_model_mode("train")
        self.num_batches = len(self.train_loader)
        for self.batch_idx, data in enumerate(self.train_loader):
            self.summary = self.forward_backward(data)
            if self.at_logging_point():
                self.check_nonfinite()
            self._call("after_step")
        self.update_lr()

    # ------------------------------------------------------------------ the stage loop

    def run_stages(self, stages=None):
        """Run the configured stages (resuming where a previous run stopped); returns all results."""
        stages = list(stages or self.plan.stages)
        ckpt.check_stages(self, stages)  # a stage that cannot start fails now, not after the earlier ones trained
        try:
            for stage in stages:
                self.run_stage(stage)
            self._call("after_train")
        finally:
            self._call("close")
        return self.results

    def run_stage(self, stage: int) -> None:
        """Train one stage from its latest checkpoint, the previous stage's, or scratch; then evaluate."""
        self.enter_stage(stage)
        start_epoch = ckpt.resume_or_initialize(self, stage)
        if start_epoch == 0:
            self.objective.start_stage(stage)
        trained = start_epoch >= self.max_epoch
        done = trained and stage in self.results
        if done:
            print(f"=> Stage {stage}: finished ({ckpt.epoch_count(self.max_epoch)}), skipped")
            return
        if trained:  # its results are of other evaluation settings: evaluate, and keep them with the weights
            print(f"=> Stage {stage}: finished ({ckpt.epoch_count(self.max_epoch)}), evaluating: no results yet "
                  f"with the current DATA.TARGETS and TEST settings")
            self.epoch, self.batch_idx = self.max_epoch, 0
            self.evaluate_targets()
            if comm.is_main_process():
                ckpt.save_training_state(self, self.max_epoch)
            comm.barrier()
            return
        first = start_epoch + 1
        span = f"epoch {first}" if first == self.max_epoch else f"epochs {first}-{self.max_epoch}"
        print(f"=> Stage {stage}: {span} of {self.max_epoch}, lr {self.objective.optim.lr[stage]:g}")
        self.epoch, self.num_batches = start_epoch, len(self.train_loader)
        self._call("before_stage")
        for self.epoch in range(start_epoch, self.max_epoch):
            self._call("before_epoch")
            self.train_epoch()
            self._call("after_epoch")
        self.epoch, self.batch_idx = self.max_epoch, 0
        self.evaluate_targets()
        self._call("after_stage")
        comm.barrier()  # the next stage starts from the checkpoint rank 0 has just written

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, dataset_name="", query_loader=None, gallery_loader=None, dist_metric="euclidean",
                  normalize_feature=False, visrank=False, visrank_topk=10, save_dir="", use_metric_cuhk03=False,
                  ranks=(1, 5, 10), rerank=False):
        """torchreid's per-target evaluation, with flip-augmented features and the fast exact evaluator."""
        flip = self.plan.evaluation.flip
        t0 = time.time()
        qf, q_pids, q_camids = extract_features(self.model, query_loader, self.device, flip, normalize_feature,
                                                desc=f"{dataset_name} query features")
        gf, g_pids, g_camids = extract_features(self.model, gallery_loader, self.device, flip, normalize_feature,
                                                desc=f"{dataset_name} gallery features")
        n_images = (len(qf) + len(gf)) * (2 if flip else 1)
        result = evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=dist_metric, rerank=rerank,
                          use_metric_cuhk03=use_metric_cuhk03, ranks=tuple(ranks))
        result["test_images_per_s"] = n_images / max(time.time() - t0, 1e-9)
        skipped = self.skipped_images
        left_out = [f"{len(skipped[k])} {split}" for split in ("query", "gallery")
                    if (k := f"{dataset_name}/{split}") in skipped]
        print(f"** {dataset_name}: mAP {result['mAP']:.1%} "
              + " ".join(f"R{r} {result[f'rank{r}']:.1%}" for r in ranks)
              + (f" (without {' and '.join(left_out)} image(s) that cannot be read)" if left_out else ""))
        self._evaluating[dataset_name] = {k: float(v) for k, v in result.items() if k != "cmc"}
        if visrank:
            distmat = compute_distance_matrix(qf, gf, dist_metric).cpu().numpy()
            compat.torchreid_base().utils.visualize_ranked_results(
                distmat, self.datamanager.fetch_test_loaders(dataset_name), self.datamanager.data_type,
                width=self.datamanager.width, height=self.datamanager.height,
                save_dir=os.path.join(save_dir, f"visrank_{dataset_name}"), topk=visrank_topk)
        return result["rank1"], result["mAP"]

    def evaluate_targets(self, key=None, save_dir=None):
        """Evaluate on every target of the data manager (torchreid's test loop); results under ``key``
        (default: the current stage) in ``self.results``; returns {target: metrics}.

        Under torchrun rank 0 evaluates the plain model, as one process would, and sends the results to the
        others, which wait meanwhile (TRAIN.DIST_TIMEOUT bounds the wait)."""
        key = self.stage if key is None else key
        save_dir = save_dir or self.plan.layout.stage_dir(key)
        t = self.plan.evaluation
        self._evaluating = {}
        if comm.is_main_process():
            writer, self.writer = self.writer, None  # test metrics are logged by the TensorBoard hook
            try:
                self.test(dist_metric=t.metric, normalize_feature=t.normalize, visrank=t.visrank,
                          visrank_topk=t.visrank_topk, save_dir=save_dir, use_metric_cuhk03=t.cuhk03_metric,
                          ranks=list(t.ranks), rerank=t.rerank)
            finally:
                self.writer = writer
        self.results[key] = comm.broadcast_object(self._evaluating)
        return self.results[key]
