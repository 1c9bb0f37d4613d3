"""Run packet cases through a loaded data plane and say precisely what went wrong."""
from __future__ import annotations

from typing import NamedTuple

from .._bpf.dataplane import DataPlane
from .cases import ACTIONS, Case, Evict, RenderedStep
from .framediff import describe, frame_diff


class StepResult(NamedTuple):
    action: int
    output: bytes
    stats: dict[str, tuple[int, int]]  # counters that moved: name -> (packets, bytes)


def stats_delta(before: dict[str, tuple[int, int]],
                after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    out = {}
    for name, (p1, b1) in after.items():
        p0, b0 = before.get(name, (0, 0))
        if (p1 - p0, b1 - b0) != (0, 0):
            out[name] = (p1 - p0, b1 - b0)
    return out


def run_step(dp: DataPlane, step: RenderedStep) -> StepResult:
    before = dp.stats()
    assert dp.program is not None  # a loaded DataPlane
    action, out, _ns = dp.program.test_run(step.input, repeat=1)
    return StepResult(action, out, stats_delta(before, dp.stats()))


def problems(step: RenderedStep, res: StepResult) -> list[str]:
    """Everything that differs from the step's expectation ([] when it passed)."""
    errs = []
    if res.action != step.action:
        errs.append(f"verdict: expected {ACTIONS.get(step.action, step.action)}, "
                    f"got {ACTIONS.get(res.action, res.action)}")
    if res.output != step.output:
        what = "untouched input" if step.output == step.input else "frame"
        errs.append(f"output differs from the expected {what}:\n  "
                    + frame_diff(step.output, res.output).replace("\n", "\n  "))
    want = {name: (1, len(step.input) if i == 0 else None) for i, name in enumerate(step.stats)}
    for name, (pk, by) in want.items():
        got = res.stats.get(name, (0, 0))
        if got[0] != pk or (by is not None and got[1] != by):
            errs.append(f"counter {name}: expected +{pk} packet"
                        + (f" +{by} bytes" if by is not None else "") + f", got {got}")
    extra = {k: v for k, v in res.stats.items() if k not in want}
    if extra:
        errs.append(f"unexpected counters moved: {extra}")
    return errs


def step_message(case: Case, step: RenderedStep, errs: list[str]) -> str:
    head = f"{case.name}\nstep {step.index}" + (f" ({step.note})" if step.note else "")
    return f"{head}: {describe(step.input)}\n" + "\n".join(f"- {e}" for e in errs)


def run_case(dp: DataPlane, case: Case) -> list[str]:
    """Run every step in order; the failure messages ([] when the case passed). A failing
    step does not stop the case: later steps say whether the flow state went wrong too."""
    failures = []
    for step in case.rendered:
        if isinstance(step, Evict):
            dp.clear_flows(nat=False)
            continue
        errs = problems(step, run_step(dp, step))
        if errs:
            failures.append(step_message(case, step, errs))
    return failures
