"""Where a training step's time goes: torch.profiler tables per stage (``tools/benchmark.py --profile``).

* **Forward** time is split by module group (backbone, E_R, E_U, G, D). Forward hooks on the model's parts
  open a profiler range around each call. The hooks exist only while profiling, so the training step
  itself carries no labels and no overhead.
* **Backward** time goes to the group whose forward op created each autograd node. The profiler records the
  autograd sequence number both on a forward op and on the backward function it created
  (``FunctionEvent.sequence_nr``).
* **Optimiser** time is what torch's ``Optimizer.step``/``zero_grad`` ranges contain.
* The rest of the step (losses, partner draw and part shuffle, copies, and the backward of the loss terms)
  is reported as one row.
"""
import collections
import contextlib

import torch
from tabulate import tabulate

# model attribute -> group name in the tables
GROUPS = {"backbone": "backbone", "encoder_r": "E_R", "encoder_u": "E_U", "generator": "G", "discriminator": "D"}
PREFIX = "isgan::"  # our group ranges
STEP = "isgan_step"
BACKWARD = "autograd::engine::evaluate_function: "
OPTIMIZER = "Optimizer."
REST = "rest (losses, shuffles, copies)"
PHASES = ("forward", "backward", "optimizer")


@contextlib.contextmanager
def group_ranges(model):
    """While active, every forward of a model part in :data:`GROUPS` runs inside a profiler range
    ``isgan::<group>``."""
    handles = []
    for attr, group in GROUPS.items():
        module = getattr(model, attr, None)
        if module is None:
            continue
        open_ranges = []

        def enter(mod, args, name=PREFIX + group, open_ranges=open_ranges):
            open_ranges.append(torch.profiler.record_function(name).__enter__())

        def leave(mod, args, output, open_ranges=open_ranges):
            open_ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile_step(step, model, device):
    """Profile one call of ``step()`` with :func:`group_ranges` on ``model``; returns the profiler's events."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with group_ranges(model), torch.profiler.profile(activities=activities) as prof:
        with torch.profiler.record_function(STEP):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return prof.events()


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def _descendants(event):
    stack = list(event.cpu_children)
    while stack:
        child = stack.pop()
        yield child
        stack += child.cpu_children


def _phase(event):
    """'backward' inside an autograd node, 'optimizer' inside Optimizer.step/zero_grad, else 'forward'."""
    for e in (event, *_ancestors(event)):
        if e.name.startswith(BACKWARD):
            return "backward"
        if e.name.startswith(OPTIMIZER):
            return "optimizer"
    return "forward"


def _is_outermost(event, prefix):
    return event.name.startswith(prefix) and not any(a.name.startswith(prefix) for a in _ancestors(event))


def _timers(device):
    """(total, self) time of an event in microseconds: CPU time on CPU, device (kernel) time on CUDA."""
    if device.type == "cuda":
        return (lambda e: e.device_time_total), (lambda e: e.self_device_time_total)
    return (lambda e: e.cpu_time_total), (lambda e: e.self_cpu_time_total)


def group_split(events, device):
    """{row: {phase: microseconds}} for each group, the optimiser and the rest; and the step's total."""
    total_time, _ = _timers(device)
    split = collections.defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    creator = {}  # autograd sequence number -> group whose forward created the node
    step = 0.0
    for event in events:
        if event.name == STEP:
            step += total_time(event)
        elif event.name.startswith(PREFIX) and _is_outermost(event, PREFIX):
            group = event.name[len(PREFIX):]
            split[group]["forward"] += total_time(event)
            for child in _descendants(event):
                if child.sequence_nr >= 0:
                    creator[child.sequence_nr] = group
    for event in events:
        if _is_outermost(event, BACKWARD):
            split[creator.get(event.sequence_nr, REST)]["backward"] += total_time(event)
        elif _is_outermost(event, OPTIMIZER):
            split["optimizer"]["optimizer"] += total_time(event)
    split[REST]["forward"] = max(0.0, step - sum(sum(phases.values()) for phases in split.values()))
    return dict(split), step


def top_operators(events, device, limit=15):
    """[(name, {phase: self microseconds}, calls)] of the ``limit`` operators with most self time."""
    _, self_time = _timers(device)
    per_op = collections.defaultdict(lambda: dict.fromkeys(PHASES, 0.0))
    calls = collections.Counter()
    for event in events:
        if event.name.startswith(PREFIX) or event.name == STEP:
            continue
        per_op[event.name][_phase(event)] += self_time(event)
        calls[event.name] += 1
    ranked = sorted(per_op.items(), key=lambda item: -sum(item[1].values()))[:limit]
    return [(name, phases, calls[name]) for name, phases in ranked]


def profile_tables(events, device, limit=15):
    """The group split and the top-operator tables of one profiled step, as text."""
    split, step = group_split(events, device)
    order = [g for g in GROUPS.values() if g in split] + ["optimizer", REST]
    ms = lambda us: f"{us / 1000:.0f}"  # noqa: E731
    share = lambda us: f"{100 * us / step:.1f}%" if step else "-"  # noqa: E731
    groups = [[row, ms(split[row]["forward"]), ms(split[row]["backward"]), ms(split[row]["optimizer"]),
               ms(sum(split[row].values())), share(sum(split[row].values()))] for row in order if row in split]
    groups.append(["step", "", "", "", ms(step), share(step)])
    ops = [[name, ms(p["forward"]), ms(p["backward"]), ms(p["optimizer"]), ms(sum(p.values())),
            share(sum(p.values())), n] for name, p, n in top_operators(events, device, limit)]
    kind = "CUDA kernel" if device.type == "cuda" else "CPU"
    return "\n\n".join([
        tabulate(groups, headers=["module group", "forward ms", "backward ms", "optimizer ms", "total ms",
                                  "share of step"], tablefmt="github", disable_numparse=True),
        tabulate(ops, headers=[f"operator (top {limit} by self {kind} time)", "forward ms", "backward ms",
                               "optimizer ms", "self ms", "share of step", "calls"],
                 tablefmt="github", disable_numparse=True),
    ])
