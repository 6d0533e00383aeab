"""The config's keys: their defaults (:data:`_C`, a yacs tree), the choices of each string key, the range
of each numeric key and the keys outside the config hash. Loading, validation and hashing: :mod:`.config`.

Keys are grouped as DATA, SAMPLER, MODEL, LOSS (the paper's lambdas of Eq. 8), TRAIN (one sub-node per stage),
TEST. Defaults reproduce the authors' effective setting with their bugs fixed (see docs/design.md, "Choices");
every deviation is a key.
"""
from yacs.config import CfgNode as CN

from .data.synthetic.spec import INT_RANGES as SYNTH_RANGES

_C = CN()
_C.OUTPUT_DIR = "output/isgan_market"
_C.SEED = 1
_C.DEVICE = "auto"  # auto | cpu | cuda | cuda:N

# ---------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.ROOT = "reid-data"  # the environment variable REID_DATA_ROOT replaces this default
_C.DATA.SOURCES = ["market1501"]
_C.DATA.TARGETS = []  # empty: the sources
_C.DATA.HEIGHT = 384
_C.DATA.WIDTH = 128
_C.DATA.WORKERS = 4
_C.DATA.RANDOM_FLIP = True
_C.DATA.RANDOM_ERASING = True  # stage 1 only: the paper finds it hinders disentanglement
# True: the training loader's workers hand over uint8 batches, normalised on the device (data/device_batches.py):
# a quarter of the bytes through pinned memory and the host-to-device copy; bit-identical batches but for random
# erasing's fill, rounded to 1/255. False: torchreid's float transform
_C.DATA.UINT8_BATCHES = False
_C.DATA.CUHK03_LABELED = False
_C.DATA.CUHK03_CLASSIC_SPLIT = False  # False: the 767/700 split of Zhong et al.
_C.DATA.ON_BAD_IMAGE = "skip"  # unreadable image: skip (reported by path, counted) | error (stop before training)
_C.DATA.LOADER_TIMEOUT = 300.0  # seconds a data-loader worker may take for one batch before the run stops (0: no limit)
_C.DATA.SYNTH = CN()  # size of the embedded synthetic datasets (synthperson, synthperson_b)
_C.DATA.SYNTH.NUM_TRAIN_IDS = 48
_C.DATA.SYNTH.NUM_TEST_IDS = 48
_C.DATA.SYNTH.NUM_CAMS = 6
_C.DATA.SYNTH.IMAGES_PER_ID = 12
_C.DATA.SYNTH.HEIGHT = 128
_C.DATA.SYNTH.WIDTH = 64

# ---------------------------------------------------------------- sampler (P identities x K images)
_C.SAMPLER = CN()
_C.SAMPLER.P = 4  # identities per batch of all processes together (torchrun: P / processes each)
_C.SAMPLER.K = 4
_C.SAMPLER.EPOCH = "identities"  # identities: each id once with K images (authors) | images: torchreid's

# ---------------------------------------------------------------- model
_C.MODEL = CN()
# isgan | baseline (E_R alone, L_R only: IS-GAN's stage-1 network) | mgn | any torchreid model name
# (pcb_p6, resnet50, osnet_x1_0, ...); the factory names isgan_r50/r34/r18, mgn_r50/r18 mean NAME + BACKBONE
_C.MODEL.NAME = "isgan"
# the method that trains the model (METHODS below): auto = isgan for MODEL.NAME isgan, identity (CE, + MGN's
# triplet) for any other; or the name a method was registered under (engine.objective.register_method)
_C.MODEL.METHOD = "auto"
_C.MODEL.BACKBONE = "resnet50"  # resnet50 | resnet34 | resnet18 (isgan, mgn)
_C.MODEL.PRETRAINED = True  # ImageNet weights through torchvision
_C.MODEL.PARTS = [1, 2, 3]  # stripes per branch: part-1, part-2, part-3 (Table 3 variants)
_C.MODEL.ID_DIM = 256  # p of E_R: K x 256 = 2048-d test descriptor
_C.MODEL.NID_DIM = 64  # p of E_U
_C.MODEL.NOISE_DIM = 128
_C.MODEL.EU_POOL = "avg"  # the authors' code pools E_U with avg; the paper says max
_C.MODEL.EU_BRANCHES = "parts"  # parts: one ResNet branch per part, as E_R (paper) | shared: one branch pooled for all
# [] (paper) | [rows, cols]: E_U also encodes a rows x cols grid of cells (layout), which G draws in place
_C.MODEL.EU_GRID = []
# rgb: E_U reads the image (paper) | gray: its luminance, so colour must come from E_R | contrast: the luminance's
# local contrast, without the brightness of regions | blur: the luminance low-passed (Gaussian, sigma min(H, W) / 16),
# without patterns and prints
_C.MODEL.EU_INPUT = "rgb"
# shared: E_U reads the trunk E_R reads (paper) | frozen: a copy of it taken when stage 2 or 3 starts, never trained
# | separate: E_U's own copy of the trunk as built, trained with E_U by G's losses alone (never by L_R)
_C.MODEL.EU_TRUNK = "shared"
_C.MODEL.G_INIT = "fan_in"  # fan_in: each layer's std from the inputs it sums | reference: the authors' (G saturates)
_C.MODEL.G_CLASS_INPUT = True  # G reads the one-hot label (paper); False: the identity code alone names the person
_C.MODEL.G_STRIPES = "none"  # none (paper) | identity | both: G draws those codes' stripe features into their rows
_C.MODEL.G_WIDTH = 512  # G's widest hidden channel count (the authors'); the others scale with it
_C.MODEL.D_WIDTH = 256  # D's trunk width (the authors'); the others scale with it
_C.MODEL.G_DROPOUT = 0.2  # dropout in G's FC and first five upsampling blocks (authors' code)
_C.MODEL.G_JOINT_BATCH = True  # G runs the three fake sets as one BatchNorm batch (False: one call per set)

# ---------------------------------------------------------------- losses, Eq. 8
_C.LOSS = CN()
_C.LOSS.LAMBDA_R = 20.0  # stage 3 (stage 1 optimises L_R alone)
_C.LOSS.LAMBDA_U = [0.001, 0.01]  # stage 2, stage 3
_C.LOSS.LAMBDA_S = 10.0
_C.LOSS.LAMBDA_PS = 10.0
_C.LOSS.LAMBDA_D = 1.0  # generator side of L_D
_C.LOSS.LAMBDA_C = 2.0  # generator side of L_C
_C.LOSS.GAN_WARMUP = 0  # stage-2 epochs over which G's λ_D and λ_C rise linearly from 0 (D trains from the start)
_C.LOSS.D_LAMBDA_D = 1.0  # discriminator side of L_D
_C.LOSS.D_LAMBDA_C = 0.5  # discriminator side of L_C (authors' code)
_C.LOSS.ID_REDUCTION = "mean"  # mean of the K CEs (authors' code) | sum (paper, Eq. 1)
_C.LOSS.KL_REDUCTION = "official"  # official (sum over batch and dims, mean over K) | paper
_C.LOSS.KL_FREE_BITS = 0.0  # nats per part and image that L_U does not charge (0: off, the paper)
_C.LOSS.LABEL_SMOOTH = 0.0  # label smoothing of L_R
_C.LOSS.D_LABEL_SMOOTH = True  # D targets ~ U(0.7, 1) / U(0, 0.3) (authors' code)
_C.LOSS.PART_SHUFFLE = "local"  # local (paper) | all (global slots too) | none (authors' code, bug B1)
_C.LOSS.CLASS_ON_AUTO = True  # L_C also on auto-encoded fakes (authors' code); False: Eq. 7 only
# > 0: a further fake set G(id_b, nu_a), b of another identity in the batch, without pixel target: judged by D_D
# (in L_D) and by D_C as b, G's class term on it weighted by LAMBDA_X (L_X). 0: the paper (fakes keep their identity)
_C.LOSS.LAMBDA_X = 0.0
# > 0: E_R (frozen, BN in eval) reads each cross-identity fake G(id_b, nu_a) and its K part features should point
# as id_b's do: L_code = LAMBDA_CODE x mean(1 - cos), a term of G's side. 0: the paper (no such term)
_C.LOSS.LAMBDA_CODE = 0.0
# what E_R reads for L_code: rgb (the fakes as they are, against id_b's code) | gray (the luminance of each fake
# against E_R's reading of the luminance of b's own image: the fake's grey level, its silhouette and the brightness
# of its regions, should be b's, which colour alone cannot satisfy)
_C.LOSS.CODE_INPUT = "rgb"
# > 0: the trunk (frozen, BN in eval) reads each fake that has a pixel target and its target image, and their maps
# after layer1, layer2 and the trunk should match position by position (LPIPS's distance, unweighted):
# L_feat = LAMBDA_FEAT x the mean over the three maps, a term of G's side. 0: the paper (pixels only)
_C.LOSS.LAMBDA_FEAT = 0.0
# > 0: D also holds a linear identity classifier of E_U's nuisance codes (its means), trained on them (D_nu), and
# E_U is asked to leave it guessing: L_nu = LAMBDA_ADV_U x KL(uniform || its softmax). 0: the paper (no adversary)
_C.LOSS.LAMBDA_ADV_U = 0.0
# > 0: in stage 3 E_R also learns the identities from G's cross-identity fakes G(id_b, nu_a) (detached, read on
# BatchNorm's running statistics), as b: L_R_fake = LAMBDA_R_FAKE x L_R of them, the fakes as training images
# (DG-Net's primary feature learning, hard labels). 0: the paper (fakes never train E_R)
_C.LOSS.LAMBDA_R_FAKE = 0.0
# > 0: L_R_fake's targets smoothed by this (label-smoothing regularisation of generated images, CamStyle: Zhong et
# al. 2018, whose hard labels on fakes hurt). 0: LABEL_SMOOTH's, as the real images' targets
_C.LOSS.R_FAKE_LABEL_SMOOTH = 0.0
# "teacher": each fake's L_R_fake term weighted by w = sigmoid(l_b - l_a), l the mean logits of a frozen copy of the
# trunk and E_R taken as stage 3 starts (trained on real images only), b the drawn identity, a the person whose
# nuisance code it carries: a fake that still shows a is not taught as b. "none": every fake counts fully
_C.LOSS.R_FAKE_JUDGE = "none"
# > 0: in stage 3 the gradient G's terms send into the identity code (G's input) is scaled down to at most
# CODE_GRAD_CAP x the norm of L_R's there, per batch: G's push on E_R shrinks as L_R's does. 0: the paper (no cap)
_C.LOSS.CODE_GRAD_CAP = 0.0
_C.LOSS.TARGET_SPACE = "rgb"  # rgb: [-1, 1] RGB | tanh: tanh(normalised image), the authors' target
_C.LOSS.TRIPLET_MARGIN = 1.2  # batch-hard triplet loss on E_R's global features: MGN's, and IS-GAN's with ISGAN_TRIPLET
_C.LOSS.LAMBDA_TRIPLET = 1.0
_C.LOSS.ISGAN_TRIPLET = False  # IS-GAN: add MGN's triplet term to L_R in stages 1 and 3 (False: the paper, CE only)

# ---------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.STAGES = [1, 2, 3]
_C.TRAIN.INIT_WEIGHTS = ""  # checkpoint to start the first listed stage > 1 from, when OUTPUT_DIR has none
_C.TRAIN.ADAM_BETAS = [0.9, 0.999]
_C.TRAIN.WEIGHT_DECAY = 5e-4  # Adam (coupled L2, amsgrad) for encoders + G
_C.TRAIN.AMSGRAD = True
_C.TRAIN.D_OPTIMIZER = "sgd"  # D_D + D_C: sgd (paper: momentum D_MOMENTUM) | adam (betas D_ADAM_BETAS)
_C.TRAIN.D_MOMENTUM = 0.9
_C.TRAIN.D_ADAM_BETAS = [0.5, 0.999]  # DCGAN's
_C.TRAIN.D_LR_MULT = 1.0  # D's learning rate = the stage's x this (two time-scale updates when != 1)
_C.TRAIN.D_WEIGHT_DECAY = 1e-4
_C.TRAIN.LR_MULT_GU = 1.0  # stage-3 lr multiplier for G and E_U (authors intended 0.01, never applied)
_C.TRAIN.GAMMA = 0.1
_C.TRAIN.PRINT_FREQ = 20
_C.TRAIN.RESUME_FREQ = 1  # epochs between "latest" checkpoints (what an interrupted run resumes from)
_C.TRAIN.CHECKPOINT_FREQ = 50  # epochs between kept model.pth.tar-<epoch> (at "latest" epochs only)
_C.TRAIN.SAMPLE_FREQ = 10  # epochs between image grids in stages 2-3 (0: only at the end)
_C.TRAIN.GRAD_NORM_FREQ = 50  # stage-2/3 steps between logs of each loss term's gradient norm per module (0: off)
_C.TRAIN.AMP = False  # mixed precision (autocast) in TRAIN.AMP_DTYPE
_C.TRAIN.CUDNN_BENCHMARK = True  # CUDA: cuDNN chooses each convolution's algorithm by timing it once per shape
# auto (bfloat16 on the CPU and on GPUs that compute in it, else float16) | bfloat16 | float16 (+ loss scaling)
_C.TRAIN.AMP_DTYPE = "auto"
_C.TRAIN.CHANNELS_LAST = False  # channels-last memory format for the model and its inputs
_C.TRAIN.KEEP_FREED_MEMORY = True  # glibc: freed blocks stay in the heap for the next step (no page faults)
_C.TRAIN.FLUSH_DENORMAL = True  # CPU: denormal floats read as 0 (long GAN runs slow down on them); False: IEEE
_C.TRAIN.NONFINITE = "error"  # error | skip (skip the step and count it)
_C.TRAIN.SYNC_BN = False  # torchrun on GPUs: BatchNorm statistics over the batches of all processes
_C.TRAIN.DIST_TIMEOUT = 30.0  # torchrun: minutes a process waits for the others (rank 0 evaluates meanwhile)
_C.TRAIN.STAGE1 = CN()
_C.TRAIN.STAGE1.EPOCHS = 300
_C.TRAIN.STAGE1.LR = 2e-4
_C.TRAIN.STAGE1.MILESTONES = []
_C.TRAIN.STAGE2 = CN()
_C.TRAIN.STAGE2.EPOCHS = 200
_C.TRAIN.STAGE2.LR = 2e-4
_C.TRAIN.STAGE2.MILESTONES = []
_C.TRAIN.STAGE3 = CN()
_C.TRAIN.STAGE3.EPOCHS = 100
_C.TRAIN.STAGE3.LR = 2e-5
_C.TRAIN.STAGE3.MILESTONES = []

# ---------------------------------------------------------------- test
_C.TEST = CN()
_C.TEST.BATCH_SIZE = 64
_C.TEST.FLIP = True  # descriptor = f(x) + f(flip(x)) as the authors evaluate
_C.TEST.NORMALIZE = True  # L2-normalise descriptors
_C.TEST.METRIC = "euclidean"  # euclidean | cosine
_C.TEST.RERANK = False  # k-reciprocal re-ranking (Zhong et al. 2017)
_C.TEST.CUHK03_METRIC = False  # single-gallery-shot CUHK03 protocol (classic split only)
_C.TEST.RANKS = [1, 5, 10]
_C.TEST.VISRANK = False
_C.TEST.VISRANK_TOPK = 10

CHOICES = {
    "DATA.ON_BAD_IMAGE": ("skip", "error"),
    "MODEL.BACKBONE": ("resnet18", "resnet34", "resnet50"),
    "MODEL.EU_POOL": ("avg", "max"),
    "MODEL.EU_BRANCHES": ("parts", "shared"),
    "MODEL.EU_INPUT": ("rgb", "gray", "contrast", "blur"),
    "MODEL.EU_TRUNK": ("shared", "frozen", "separate"),
    "MODEL.G_STRIPES": ("none", "identity", "both"),
    "MODEL.G_INIT": ("fan_in", "reference"),
    "LOSS.ID_REDUCTION": ("mean", "sum"),
    "LOSS.KL_REDUCTION": ("official", "paper"),
    "LOSS.PART_SHUFFLE": ("local", "all", "none"),
    "LOSS.TARGET_SPACE": ("rgb", "tanh"),
    "LOSS.R_FAKE_JUDGE": ("none", "teacher"),
    "LOSS.CODE_INPUT": ("rgb", "gray"),
    "TRAIN.NONFINITE": ("error", "skip"),
    "TRAIN.AMP_DTYPE": ("auto", "bfloat16", "float16"),
    "TRAIN.D_OPTIMIZER": ("sgd", "adam"),
    "SAMPLER.EPOCH": ("identities", "images"),
    "TEST.METRIC": ("euclidean", "cosine"),
}
# every numeric key -> its allowed values in interval notation ("[a, b)": a <= x < b; inf: no bound); a list key
# applies to each element. NaN and infinities are outside every range. Checked by validate(), before any training.
RANGES = {
    "SEED": "[0, 4294967295]",  # numpy's seed range
    "DATA.HEIGHT": "[1, inf)",
    "DATA.WIDTH": "[1, inf)",
    "DATA.WORKERS": "[0, inf)",
    "DATA.LOADER_TIMEOUT": "[0, inf)",
    **{f"DATA.SYNTH.{field.upper()}": f"[{lo}, {hi}]" for field, (lo, hi) in SYNTH_RANGES.items()
       if field.upper() in _C.DATA.SYNTH},
    "SAMPLER.P": "[1, inf)",
    "SAMPLER.K": "[1, inf)",
    "MODEL.PARTS": "[1, inf)",
    "MODEL.ID_DIM": "[1, inf)",
    "MODEL.NID_DIM": "[1, inf)",
    "MODEL.NOISE_DIM": "[1, inf)",
    "MODEL.G_DROPOUT": "[0, 1)",
    "MODEL.G_WIDTH": "[8, inf)",
    "MODEL.D_WIDTH": "[8, inf)",
    **{f"LOSS.{name}": "[0, inf)" for name in ("LAMBDA_R", "LAMBDA_U", "LAMBDA_S", "LAMBDA_PS", "LAMBDA_D", "LAMBDA_C",
                                               "LAMBDA_X", "LAMBDA_CODE", "LAMBDA_FEAT", "LAMBDA_ADV_U",
                                               "LAMBDA_R_FAKE", "CODE_GRAD_CAP", "D_LAMBDA_D", "D_LAMBDA_C",
                                               "LAMBDA_TRIPLET", "TRIPLET_MARGIN", "KL_FREE_BITS")},
    "LOSS.LABEL_SMOOTH": "[0, 1)",
    "LOSS.R_FAKE_LABEL_SMOOTH": "[0, 1)",
    "LOSS.GAN_WARMUP": "[0, inf)",
    "TRAIN.STAGES": "[1, 3]",
    "TRAIN.ADAM_BETAS": "[0, 1)",
    "TRAIN.WEIGHT_DECAY": "[0, inf)",
    "TRAIN.D_MOMENTUM": "[0, 1)",
    "TRAIN.D_ADAM_BETAS": "[0, 1)",
    "TRAIN.D_WEIGHT_DECAY": "[0, inf)",
    "TRAIN.LR_MULT_GU": "(0, inf)",
    "TRAIN.D_LR_MULT": "(0, inf)",
    "TRAIN.GAMMA": "(0, 1]",
    "TRAIN.PRINT_FREQ": "[1, inf)",
    "TRAIN.RESUME_FREQ": "[1, inf)",
    "TRAIN.CHECKPOINT_FREQ": "[1, inf)",
    "TRAIN.SAMPLE_FREQ": "[0, inf)",
    "TRAIN.GRAD_NORM_FREQ": "[0, inf)",
    "TRAIN.DIST_TIMEOUT": "(0, inf)",
    **{f"TRAIN.STAGE{s}.{name}": interval for s in (1, 2, 3)
       for name, interval in (("EPOCHS", "[0, inf)"), ("LR", "(0, inf)"), ("MILESTONES", "[1, inf)"))},
    "TEST.BATCH_SIZE": "[1, inf)",
    "TEST.RANKS": "[1, inf)",
    "TEST.VISRANK_TOPK": "[1, inf)",
}
# keys that do not change what is trained: excluded from the checkpoint's config hash. A stage's EPOCHS says how
# long it trains, which its checkpoint records (``epoch``): a resume checks that count against them instead
# (engine.checkpoint.check_resumable), so that a run can be extended and the checkpoints of its earlier stages
# still match the run's config.yaml
HASH_EXCLUDED = ("OUTPUT_DIR", "DEVICE", "TRAIN.STAGES", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
                  "TRAIN.RESUME_FREQ", "TRAIN.SAMPLE_FREQ", "TRAIN.GRAD_NORM_FREQ", "TRAIN.DIST_TIMEOUT",
                  "TRAIN.FLUSH_DENORMAL", "TRAIN.KEEP_FREED_MEMORY", "DATA.ROOT",
                  "DATA.WORKERS", "DATA.TARGETS", "DATA.ON_BAD_IMAGE", "DATA.LOADER_TIMEOUT", "TEST",
                  "TRAIN.STAGE1.EPOCHS", "TRAIN.STAGE2.EPOCHS", "TRAIN.STAGE3.EPOCHS")
