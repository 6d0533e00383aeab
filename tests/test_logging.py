"""What a run tells its user: the progress line and its ETA, TensorBoard steps (continuous across stages and
resumes, no duplicates), sample grids, train.log, the results table, the console (progress of long loops,
line-buffered output, torchreid's banners once), --resume/--no-resume, --eval-only and tools/test.py's
results.json."""
import os
import select
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tqdm import tqdm

from isgan_torchreid import cli, console
from isgan_torchreid.data.images import check_images
from isgan_torchreid.config import load_config
from isgan_torchreid import storage
from isgan_torchreid.engine import hooks
from isgan_torchreid.engine.evaluation import extract_features
from isgan_torchreid.engine.hooks import ProgressPrinter, TensorBoardWriter, grouped
from isgan_torchreid.engine.objective import IdentityObjective, ISGANObjective
from isgan_torchreid.engine.plan import RunLayout, RunPlan
from isgan_torchreid.engine.staged import StagedEngine
from isgan_torchreid.errors import ISGANError
from isgan_torchreid.models import build_model
from isgan_torchreid.visualize.canvas import Tile, sheet, to_pil
from isgan_torchreid.visualize.samples import SampleGrids

from conftest import CONFIGS, REPO, TINY, interrupted_at

CONFIG = os.path.join(CONFIGS, "isgan_synthetic.yaml")


# ---------------------------------------------------------------- the progress line

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_engine(cfg, stage, num_batches, objective=ISGANObjective):
    """An engine as the hooks read it; ``objective``'s class declares its stages, loss groups and step costs."""
    lr = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"lr": 2e-4}]))
    plan = RunPlan.from_config(cfg)
    engine = SimpleNamespace(plan=plan, stage=stage, epoch=0, max_epoch=plan.epochs[stage],
                             batch_idx=-1, num_batches=num_batches, optimizers={"model": lr}, summary={},
                             objective=objective)
    engine.at_logging_point = lambda: StagedEngine.at_logging_point(engine)
    return engine


def steps(printer, engine, clock, n, seconds, summary):
    """Run ``n`` steps of ``seconds`` each through the printer."""
    for _ in range(n):
        clock.now += seconds
        engine.summary = {k: torch.tensor(v) for k, v in summary.items()}  # a step's values stay on the device
        engine.batch_idx += 1
        printer.after_step()


def test_progress_line_groups_fits_and_estimates_the_run(monkeypatch, capsys):
    clock = Clock()
    monkeypatch.setattr(hooks.time, "perf_counter", clock)
    cfg = load_config(None, ["TRAIN.STAGE1.EPOCHS", "300", "TRAIN.STAGE2.EPOCHS", "200", "TRAIN.STAGE3.EPOCHS", "100",
                             "TRAIN.PRINT_FREQ", "2"])
    nb = 1000
    printer = ProgressPrinter()
    engine = printer.engine = fake_engine(cfg, 1, nb)
    printer.before_stage()
    steps(printer, engine, clock, 2, 3.0, {"L_R": 1.0, "acc": 0.25})
    steps(printer, engine, clock, 2, 3.0, {"L_R": 3.0, "acc": 0.75})
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("[s1 e1/300 2/1000] 3.00s/it eta ") and "| id 1 acc 0.25 |" in first
    assert "| id 3 acc 0.75 | lr 2.0e-04" in second  # averaged over the steps since the last line
    stage_left, run_left, estimated = printer.seconds_left()
    assert stage_left == pytest.approx(3.0 * (300 * nb - 4))
    cost = ISGANObjective.stage_cost
    later = 3.0 * nb * (200 * cost[2] + 100 * cost[3])  # stages 2 and 3 scaled from stage 1's speed
    assert run_left == pytest.approx(stage_left + later) and estimated
    assert f"run ~{hooks._clock(run_left)}" in second

    # stage 2 after a measured stage 1: stage 3 trains both, so its estimate is their sum
    printer.after_stage()
    assert capsys.readouterr().out.startswith("=> stage 1: 4 steps in 0:00:12 (3.00s/it")
    engine.stage, engine.batch_idx, engine.max_epoch = 2, -1, 200
    printer.before_stage()
    worst = {"L_S": -123456.7, "L_PS": 1e-7, "L_U": 1.0, "L_D": 1.0, "L_C": 1.0, "D_dom": 1e9, "D_cls": 1.0,
             "L1_auto": 1.0, "gan/D_real": 0.999, "gan/D_fake": 0.001, "eu/kl": 9999.0, "eu/active": 1.0}
    steps(printer, engine, clock, 2, 12.345, worst)
    line = capsys.readouterr().out.strip()
    assert len(line) <= 120, (len(line), line)
    assert " | gen -1.235e+05 disc 1e+09 D 1.00/0.00 KL 1e+04 | " in line and "L1_auto" not in line
    assert "active" not in line
    _, run_left, _ = printer.seconds_left()
    stage_left = 12.345 * (200 * nb - 2)
    assert run_left == pytest.approx(stage_left + (3.0 + 12.345) * 100 * nb)

    engine.stage, engine.batch_idx, engine.max_epoch = 3, -1, 100  # the last stage: nothing estimated
    printer.before_stage()
    steps(printer, engine, clock, 2, 1.0, {"L_R": 1.0})
    assert " eta 27:46:38 run 27:46:38 | id 1 | " in capsys.readouterr().out  # 99998 s; no "~"


def test_loss_groups_cover_every_logged_term():
    terms = {"L_S", "L_PS", "L_U", "L_D", "L_C", "L_X", "L_code", "L_feat", "L_nu", "D_dom", "D_cls", "D_nu", "L_R",
             "L_tri"}
    assert {t for group in ISGANObjective.loss_groups.values() for t in group} == terms
    assert grouped({"L_R": 1, "D_dom": 2, "acc": 3}, ISGANObjective.loss_groups) == {
        "id": {"L_R": 1}, "disc": {"D_dom": 2}, "other": {"acc": 3}}
    assert grouped({"L_R": 1, "D_dom": 2}, IdentityObjective.loss_groups) == {"id": {"L_R": 1},
                                                                             "other": {"D_dom": 2}}


def test_global_step_spans_the_objectives_stages():
    cfg = load_config(None, ["TRAIN.STAGE1.EPOCHS", "5", "TRAIN.STAGE2.EPOCHS", "3", "TRAIN.STAGES", "[2, 3]"])
    writer = TensorBoardWriter()
    writer.engine = fake_engine(cfg, 2, 10)
    writer.engine.epoch, writer.engine.batch_idx = 1, 4
    assert writer.step() == (5 + 1) * 10 + 4  # stage 1's steps come first, even when this run skips stage 1
    writer.engine.stage = 3
    assert writer.step() == (5 + 3 + 1) * 10 + 4
    baseline = fake_engine(cfg, 3, 10, IdentityObjective)  # stages (1, 3): no stage-2 steps
    baseline.batch_idx = 0
    writer.engine = baseline
    assert writer.step() == 5 * 10


# ---------------------------------------------------------------- sample grids

def test_sample_grid_rows_partner_mask_and_tensorboard(tiny_cfg, tmp_path):
    cfg = tiny_cfg("MODEL.PARTS", "[2]")
    device, (dm, _) = cli.setup(cfg)
    torch.manual_seed(0)
    grids, board = SampleGrids(freq=1, num_ids=3), TensorBoardWriter()
    engine = StagedEngine(cfg, dm, build_model(cfg, dm.num_train_pids), device, hooks=[grids, board])
    engine.enter_stage(2)
    engine.num_batches = 4
    board.before_stage()
    engine.batch_idx, engine.summary = 3, {"L_S": torch.tensor(1.0), "D_dom": torch.tensor(2.0)}
    board.after_step()  # the epoch's last step: written, each optimiser's rate under the objective's tag
    engine.batch_idx = 0
    rows, sets = grids.tiles()
    assert len(rows) == 6 and sets == ["auto", "shuffled", "part_shuffled"]
    for b, row in enumerate(rows):
        assert row[0].label.startswith("pid ") and ", cam " in row[0].label  # from the Market-style name
        partner = int(row[1].label.split()[-1]) - 1
        assert partner != b and rows[partner][0].label.split(",")[0] == row[0].label.split(",")[0]  # same pid
        assert row[1].image.tobytes() == rows[partner][0].image.tobytes()  # the partner's picture
        assert row[0].image.size == (128, 256)  # 128x64 shown twice as large
        assert len(row) == 2 + 3 + 1  # real, partner, three fakes, the part-mask bar
    grids.after_epoch()  # epoch 1 of 1
    board.writer.close()
    path = os.path.join(cfg.OUTPUT_DIR, "stage2", "samples", "epoch001.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    events = EventAccumulator(os.path.join(cfg.OUTPUT_DIR, "stage2"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["samples"]
    (image,) = events.Images("samples")
    assert image.step == cfg.TRAIN.STAGE1.EPOCHS * 4 and image.height > 6 * 256
    assert sorted(events.Tags()["scalars"]) == ["eval_L1/auto", "eval_L1/part_shuffled", "eval_L1/shuffled",
                                                "loss_disc/D_dom", "loss_disc/total", "loss_gen/L_S",
                                                "loss_gen/total", "train/lr", "train/lr_D"]
    for name, value in grids.eval_l1.items():
        (logged,) = events.Scalars(f"eval_L1/{name}")
        assert logged.step == image.step and logged.value == pytest.approx(value) and 0 < value < 2


# ---------------------------------------------------------------- console log and table

def test_console_log_mirrors_and_appends(tmp_path, capsys):
    path = str(tmp_path / "train.log")
    with console.console_log(path, "first"):
        print("to both")
        print("a warning", file=sys.stderr)
    with pytest.raises(ISGANError):
        with console.console_log(path, "second"):
            raise ISGANError("bad input; fix it")
    captured = capsys.readouterr()
    assert captured.out == "to both\n" and captured.err == "a warning\n"
    text = open(path).read().splitlines()
    assert text[1].endswith(" first") and text[2:4] == ["to both", "a warning"]
    assert text[-2].endswith(" second") and text[-1] == "error: bad input; fix it"


def test_results_table_notes_stage2():
    m = {"rank1": 0.5, "rank5": 0.75, "rank10": 0.8, "mAP": 0.25}
    assert "Note: stage 2" in cli.results_table({1: {"a": m}, 2: {"a": m}, 3: {"a": m}})
    assert "Note" not in cli.results_table({1: {"a": m}, 3: {"a": m}})


# ---------------------------------------------------------------- the console: progress, line buffering

def test_progress_off_a_terminal_is_a_line_per_ten_percent(capsys):
    bar = console.progress(range(95), desc="checking", unit="img", quiet_s=0)
    assert isinstance(bar, console.ProgressLines) and list(bar) == list(range(95))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("checking: 10/95 img (10%) in 0:00:00, eta 0:00:")
    assert lines[-1] == "checking: 95/95 img (100%) in 0:00:00"
    with console.progress(total=1000, desc="embedding", unit="img", quiet_s=0) as bar:  # batches cross 30%, ...
        for n in (300, 300, 300, 100):
            bar.update(n)
            bar.set_postfix(skipped=2)
    assert [line.split(" in ")[0] for line in capsys.readouterr().err.splitlines()] == [
        f"embedding: {n}/1000 img ({n // 10}%)" for n in (300, 600, 900, 1000)]
    assert list(console.progress(range(95))) == list(range(95))  # the first QUIET_S seconds: nothing shown
    assert capsys.readouterr().err == ""


def test_progress_lines_start_after_the_quiet_seconds():
    clock = Clock()
    lines = console.ProgressLines(total=10, desc="gallery", unit="img", quiet_s=5, clock=clock)
    printed = []
    lines._line = lambda: printed.append(lines.n)
    for _ in range(10):
        clock.now += 1.0
        lines.update(1)
    assert printed == [5, 6, 7, 8, 9, 10]


def test_progress_is_tqdm_on_a_terminal_and_stays_out_of_the_log(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    path = str(tmp_path / "train.log")
    with console.console_log(path, "cmd"):
        bar = console.progress(range(3), desc="decoding", quiet_s=0)
        assert isinstance(bar, tqdm) and list(bar) == [0, 1, 2]
        print("a line")
    assert "decoding:" in capsys.readouterr().err  # the bar, on the terminal
    assert open(path).read().splitlines()[2:] == ["a line"]  # the log has no bar
    monkeypatch.setenv("RANK", "1")  # torchrun's other ranks: nothing at all
    assert list(console.progress(range(3), desc="decoding", quiet_s=0)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_image_check_and_feature_extraction_show_progress(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(console, "QUIET_S", 0)
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for path in paths:
        Image.new("RGB", (4, 8)).save(path)
    assert check_images(paths, desc="checking market1501 train images") == {}
    assert capsys.readouterr().err.splitlines()[-1] == "checking market1501 train images: 4/4 img (100%) in 0:00:00"
    items = [{"img": torch.zeros(3, 2, 2), "pid": i, "camid": 0} for i in range(5)]
    feats, _, _ = extract_features(torch.nn.Flatten(), torch.utils.data.DataLoader(items, batch_size=2), "cpu",
                                   desc="market1501 query features")
    err = capsys.readouterr().err.splitlines()
    assert feats.shape == (5, 12) and [line.split(" in ")[0] for line in err] == [
        "market1501 query features: 2/5 img (40%)", "market1501 query features: 4/5 img (80%)",
        "market1501 query features: 5/5 img (100%)"]


CHILD = """import sys
from isgan_torchreid.cli import reports_errors

@reports_errors
def main(argv):
    print("ready", sys.stdout.line_buffering)
    sys.stdin.readline()

main([])
"""


def test_tools_write_line_by_line_into_a_pipe():
    """Every tool's entry point makes stdout line-buffered: under nohup or a scheduler (stdout a file or a pipe)
    each line shows when printed, not at exit."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=REPO)
    try:
        readable, _, _ = select.select([child.stdout], [], [], 300)
        assert readable, "nothing arrived while the tool ran: its stdout is block-buffered"
        assert child.stdout.readline() == "ready True\n"
    finally:
        child.stdin.close()  # the child's readline returns; it exits
        assert child.wait(timeout=60) == 0


# ---------------------------------------------------------------- list flags, the same in every tool

def test_list_flags_accept_spaces_commas_and_repeats():
    pop = cli.pop_list_flag
    assert pop(["--stages", "2", "3", "SEED", "1"], "--stages", str.isdigit, "2 3") == (["SEED", "1"], ["2", "3"])
    assert pop(["--stages", "2,3"], "--stages", str.isdigit, "2 3")[1] == ["2", "3"]
    assert pop(["--stages=2,3", "SEED", "1"], "--stages", str.isdigit, "2 3") == (["SEED", "1"], ["2", "3"])
    assert pop(["--stages", "2,", "3"], "--stages", str.isdigit, "2 3")[1] == ["2", "3"]
    assert pop(["--w", "a", "--x", "--w", "b,c"], "--w", cli.is_value, "a") == (["--x"], ["a", "b", "c"])
    assert pop(["--x"], "--w", cli.is_value, "a") == (["--x"], None)
    with pytest.raises(ISGANError, match="--stages needs values, e.g. --stages 2 3"):
        pop(["--stages", "SEED", "1"], "--stages", str.isdigit, "2 3")
    with pytest.raises(ISGANError, match="--stages x: not a valid value"):
        pop(["--stages=2,x"], "--stages", str.isdigit, "2 3")
    assert cli.is_config_key("MODEL.NAME") and cli.is_config_key("SEED") and not cli.is_value("DATA.ROOT")
    assert cli.is_value("0012_c1s1_000001_00.jpg") and cli.is_value("7")


def test_every_tool_parses_list_flags_alike(tmp_path, monkeypatch):
    from isgan_torchreid import benchmarks, compare
    from isgan_torchreid.benchmarks import training
    from isgan_torchreid.visualize import main as visualize
    seen = {}
    monkeypatch.setattr(cli.mains, "setup", lambda cfg: seen.update(stages=list(cfg.TRAIN.STAGES)) or (None, None))
    monkeypatch.setattr(cli.mains, "build_engine", lambda *a: SimpleNamespace(run_stages=lambda: {}))
    cli.train_main(["--config-file", CONFIG, "--stages", "2,3", "OUTPUT_DIR", str(tmp_path / "t")])
    monkeypatch.setattr(cli.mains, "evaluate_weights", lambda cfg, w: seen.update(targets=list(cfg.DATA.TARGETS)))
    cli.test_main(["--config-file", CONFIG, "--weights", "w", "--targets", "market1501,dukemtmcreid"])
    monkeypatch.setattr(compare, "compare",
                        lambda c, o, methods, seeds, start, by_factor: seen.update(methods=methods, seeds=seeds,
                                                                                   start=start)
                        or compare.Comparison([], [], None))
    compare.compare_main(["--config-file", CONFIG, "--methods", "isgan,mgn", "--seeds", "0", "1",
                          "--start-from=prev"])
    monkeypatch.setattr(training, "bench_training", lambda cfg, methods, **k: seen.update(bench=list(methods)) or [])
    benchmarks.benchmark_main(["--config-file", CONFIG, "--skip-evaluator", "--methods", "isgan", "mgn"])
    monkeypatch.setitem(visualize.COMMANDS, "grid", lambda args, opts: seen.update(images=args.images)
                        or sheet([[Tile(to_pil(torch.zeros(3, 4, 4)))]]))
    visualize.visualize_main(["grid", "--weights", "w", "--images", "a.jpg,b.jpg", "c.jpg", "--out",
                              str(tmp_path / "g.png")])
    assert seen == {"stages": [2, 3], "targets": ["market1501", "dukemtmcreid"], "methods": ["isgan", "mgn"],
                    "seeds": ["0", "1"], "start": "prev", "bench": ["isgan", "mgn"],
                    "images": ["a.jpg", "b.jpg", "c.jpg"]}


# ---------------------------------------------------------------- a run: interrupted, resumed, evaluated

@pytest.fixture(scope="module")
def interrupted_run(data_root, module_dir):
    """The E_R baseline (stages [1, 3]; small checkpoints) trained with an interruption in stage 1's second
    epoch after its TensorBoard events reached the disk, then resumed to the end; yields (argv, OUTPUT_DIR)."""
    out = str(module_dir / "run")
    argv = ["--config-file", CONFIG, "--debug"] + TINY + [
        "MODEL.NAME", "baseline", "MODEL.PARTS", "[2]", "TRAIN.STAGES", "[1, 3]", "TRAIN.STAGE1.EPOCHS", "2",
        "TRAIN.PRINT_FREQ", "2", "DATA.ROOT", data_root, "OUTPUT_DIR", out]

    def flush_events(engine):  # the steps after the checkpoint are on disk
        for hook in engine.hooks:
            if isinstance(hook, TensorBoardWriter):
                hook.writer.flush()

    with interrupted_at(stage=1, epoch=1, step=2, before=flush_events), pytest.raises(KeyboardInterrupt):
        cli.train_main(argv)
    cli.train_main(argv)
    yield argv, out


def scalar_steps(folder, tag):
    events = EventAccumulator(folder)
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_tensorboard_steps_are_continuous_and_unique(interrupted_run):
    _, out = interrupted_run
    nb = 4  # 8 identities once, 2 per batch
    assert scalar_steps(os.path.join(out, "stage1"), "loss_id/L_R") == list(range(2 * nb))  # purged, then re-run
    assert scalar_steps(os.path.join(out, "stage3"), "loss_id/L_R") == list(range(2 * nb, 3 * nb))
    assert scalar_steps(os.path.join(out, "stage3"), "train/lr") == list(range(2 * nb, 3 * nb))
    assert scalar_steps(os.path.join(out, "stage1"), "test/synthperson/mAP") == [2 * nb]


def test_train_log_holds_both_sessions(interrupted_run):
    _, out = interrupted_run
    text = open(os.path.join(out, "train.log")).read()
    assert text.count("==> ") == 2 and "KeyboardInterrupt" in text
    assert "=> resuming from checkpoints" in text and "[s1 e2/2 2/4]" in text and "| R-1 " in text
    assert "Note: stage 2" not in text  # the baseline has no stage 2
    for session in text.split("\n==> ")[1:]:  # torchreid's banners once per invocation, not once per stage
        for banner in ("Building train transforms ...", "Building test transforms ...", "=> Loaded SynthPerson",
                       "**** Summary ****"):
            assert session.count(banner) == 1, (banner, session)
        assert "=> stage 1 trains with random flip and random erase" in session
    assert "=> stage 3 trains with random flip\n" in text


def test_no_resume_refuses_and_keeps_checkpoints(interrupted_run, capsys):
    argv, out = interrupted_run
    before = cli.checkpoints_in(out)
    with pytest.raises(SystemExit) as info:
        cli.train_main(["--no-resume"] + [a for a in argv if a != "--debug"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: --no-resume: {out} already holds checkpoints (stage1/latest.pth.tar") and \
        "set a new OUTPUT_DIR" in err
    assert cli.checkpoints_in(out) == before


def test_eval_only_and_test_results_json(interrupted_run):
    argv, out = interrupted_run
    results = cli.train_main(["--eval-only"] + argv)
    stored = storage.read_json(os.path.join(out, "test", "results.json"))
    latest = os.path.abspath(RunLayout(out).latest(3))
    assert stored == {latest: results["test"]}
    trained = storage.read_json(os.path.join(out, "results.json"))["stage3"]
    assert {k: v for k, v in results["test"]["synthperson"].items() if k != "test_images_per_s"} == \
        {k: v for k, v in trained["synthperson"].items() if k != "test_images_per_s"}  # the last stage's weights
    stage1 = RunLayout(out).latest(1)
    cli.test_main(["--config-file", CONFIG, "--weights", stage1] + argv[3:])
    assert set(storage.read_json(os.path.join(out, "test", "results.json"))) == {latest, os.path.abspath(stage1)}


def test_flags_after_the_overrides_are_refused(tmp_path, capsys):
    with pytest.raises(ISGANError, match="--no-resume comes after the KEY VALUE overrides.*put flags before them"):
        cli.train_main(["--config-file", CONFIG, "--debug", "SEED", "2", "--no-resume"])


def test_eval_only_without_checkpoints(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.train_main(["--config-file", CONFIG, "--eval-only", "OUTPUT_DIR", str(tmp_path)])
    err = capsys.readouterr().err
    assert err.startswith("error: --eval-only: ") and "tools/test.py --weights" in err
