"""Which cheap run predicts which target run: the paper's two families of comparisons.

Family A: every smaller model at a checkpoint predicts the largest model of its suite there.
Family B: every earlier checkpoint of a model predicts that model's final checkpoint (Pythia:
step143000; other models: their latest evaluated step).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from vmem import pythia
from vmem.errors import VmemError
from vmem.scoring import GENERATE, RELEASED, VERIFY
from vmem.study.merged_runs import Run, model_and_label

FAMILIES = {
    "A": "smaller model, same checkpoint → largest model",
    "B": "earlier checkpoint → same model's final checkpoint",
}
# Which run stands for a checkpoint evaluated by several methods: the first of these present.
STANDING = (GENERATE, VERIFY, RELEASED)


@dataclass(frozen=True)
class Comparison:
    family: str  # "A" or "B"
    cheap: Run
    target: Run


def split_twins(runs: list[Run], where: str) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """One run per model and checkpoint, and (other, reference) pairs of a model and checkpoint
    evaluated by several methods: the first present of STANDING stands for the checkpoint (a
    generation run has the fractional score too) and every other run's flags are compared with
    its flags. Two runs of one method, model and checkpoint are refused."""
    by_model_step: dict[tuple[str, int | None], dict[str, Run]] = {}
    for run in runs:
        by_method = by_model_step.setdefault((run.model, run.step), {})
        if (other := by_method.get(run.method)) is not None:
            raise VmemError(f"{where}: runs {other.name} and {run.name} are both {run.model} at "
                            f"step {run.step} by method {run.method}; keep one run per model, "
                            f"checkpoint and method")
        by_method[run.method] = run
    standing, pairs = [], []
    for by_method in by_model_step.values():
        reference, *others = [by_method[m] for m in STANDING if m in by_method]
        for other in others:
            _check_window(other, reference, where)
        standing.append(reference)
        pairs += [(other, reference) for other in others]
    return standing, pairs


def plan_comparisons(runs: list[Run], where: str) -> list[Comparison]:
    """All family A and B comparisons among `runs`, one per model and checkpoint (split_twins'
    runs; found in `where`, for messages)."""
    comparisons = _smaller_models(runs, where) + _earlier_checkpoints(runs)
    for comparison in comparisons:
        _check_window(comparison.cheap, comparison.target, where)
    return comparisons


def _check_window(a: Run, b: Run, where: str) -> None:
    """Memorized flags are comparable only for the same prompt and continuation lengths."""
    if (a.prompt_len, a.cont_len) != (b.prompt_len, b.cont_len):
        raise VmemError(f"{where}: runs {a.name} (prompt {a.prompt_len}, continuation "
                        f"{a.cont_len}) and {b.name} (prompt {b.prompt_len}, continuation "
                        f"{b.cont_len}) are compared, but their memorized flags are for different "
                        f"windows; evaluate them with the same --prompt-len and --cont-len")


def _smaller_models(runs: list[Run], where: str) -> list[Comparison]:
    groups: dict[tuple[str, int | None], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.suite, run.step)].append(run)
    comparisons = []
    for (_, step), group in sorted(groups.items(), key=_suite_then_step):
        if len(group) < 2:
            continue
        for run in group:
            if run.params is None:
                raise VmemError(f"{run.name}: parameter count unknown (not a Pythia model and no "
                                "'params' in its manifest; pass --params to vmem evaluate); "
                                f"needed to find the largest model at step {step}")
        group = sorted(group, key=lambda r: (r.params, r.name))
        target = group[-1]
        if group[-2].params == target.params:
            raise VmemError(f"{where}: {group[-2].name} and {target.name} have the same parameter "
                            f"count at step {step}; cannot tell which model is the largest")
        comparisons += [Comparison("A", cheap, target) for cheap in group[:-1]]
    return comparisons


def _suite_then_step(item: tuple[tuple[str, int | None], list[Run]]) -> tuple[str, int]:
    (suite, step), _ = item
    return suite, -1 if step is None else step


def checkpoints_by_model(runs: list[Run]) -> dict[str, list[Run]]:
    """Each model with several checkpoints: its runs in training order."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.model].append(run)
    ordered = {}
    for model, group in sorted(groups.items()):
        if len(group) < 2:
            continue
        for run in group:
            if run.step is None:
                raise VmemError(f"{run.name}: training step unknown (no 'step' in its manifest, "
                                f"revision not stepN); needed to order the checkpoints of {model}")
        ordered[model] = sorted(group, key=lambda r: r.step)
    return ordered


def _has_final(group: list[Run]) -> bool:
    """Pythia's final checkpoint is step143000; another model's (read through any order: its
    suite then names the order) is its latest evaluated."""
    model, _ = model_and_label(group[0].settings["model"])
    return pythia.suite_of(model) is None or group[-1].step == pythia.FINAL_STEP


def without_final(runs: list[Run]) -> list[str]:
    """Models with several checkpoints but not the final one: no family B target (their
    checkpoints still count for forgetting). `runs`: one per model and checkpoint."""
    return [model for model, group in checkpoints_by_model(runs).items() if not _has_final(group)]


def _earlier_checkpoints(runs: list[Run]) -> list[Comparison]:
    return [Comparison("B", cheap, group[-1]) for group in checkpoints_by_model(runs).values()
            if _has_final(group) for cheap in group[:-1]]
