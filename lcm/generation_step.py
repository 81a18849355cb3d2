"""Generation results, and the rule that turns the model's prediction for one row into the row's next step.

A *row* is one generated solution (one sample of one problem). Each step of batched generation
(`lcm.generate.ConceptGenerator.generate`) predicts the next concept of every active row in one forward;
for each row, `StepRule.classify` says what the prediction is (the user's plan is due, end-of-text, the
model's plan, a break, a step) by the argmax of its cosines to the end-of-text concept, the break concept and
the best sentence it could be read out as; the driver reads out the plans and the steps of all rows in one
call each, and `StepRule.apply` records the step, feeds back the next input and says whether the row goes on.
The rule touches no model, encoder or bank: it is tested on its own with hand-made vectors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from lcm.decoding import Decoded
from lcm.errors import LCMError

StopReason = Literal["end_of_text", "repetition", "max_steps"]
FEEDBACK = ("decoded", "retrieved", "predicted")  # "retrieved" is the old name of "decoded"


@dataclass
class Step:
    text: str
    embedding: np.ndarray  # (D,) the model's predicted (de-normalized) concept
    score: float  # round-trip cosine: the decoded text's encoder embedding vs the prediction
    source: str = "retrieved"  # "retrieved" from a bank, "generated" by the sentence decoder, "supplied" (a user's plan)
    paragraph: int = 0
    is_plan: bool = False


@dataclass
class Generation:
    problem: str
    steps: list[Step] = field(default_factory=list)  # plans (is_plan=True) and steps, in order
    stop_reason: StopReason = "max_steps"
    breaks_predicted: int = 0  # planning: paragraph ends the model predicted
    breaks_forced: int = 0  # planning: paragraph ends forced by max_paragraph_steps
    calls: int = 0  # concept-model predictions made for this solution (one per loop step, the stopping one too)
    prompt_concepts: int = 0  # leading entries of `inputs` that are the problem's sentences
    # entropy (nats) of the step policy over the sentence bank at each prediction (`lcm.step_policy`, the tau
    # fitted at validation); empty for models without one (diffusion) or checkpoints without a fitted tau
    entropies: list[float] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list, repr=False)  # every concept fed to the model (D,)

    @property
    def paragraphs(self) -> list[list[Step]]:
        out: list[list[Step]] = []
        for s in self.steps:
            while len(out) <= s.paragraph:
                out.append([])
            out[s.paragraph].append(s)
        return out

    @property
    def text(self) -> str:
        return "\n".join(s.text for s in self.steps)


def format_generation(gen: Generation) -> list[str]:
    """Readable lines: plans as paragraph headings, numbered steps with their cosine."""
    lines, n = [], 0
    for s in gen.steps:
        if s.is_plan:
            tag = ", supplied" if s.source == "supplied" else ""
            lines.append(f"  [plan {s.paragraph + 1}] {s.text}  (cos {s.score:.2f}{tag})")
        else:
            n += 1
            tag = ", generated" if s.source == "generated" else ""
            lines.append(f"  {n:2d}. {s.text}  (cos {s.score:.2f}{tag})")
    return lines


class Kind(Enum):
    """What one prediction is (`StepRule.classify`)."""

    SUPPLIED_PLAN = "supplied plan"  # a paragraph starts and the user gave its plan: that plan is fed back
    END = "end of text"  # closer to the end-of-text concept than to the break concept and to any sentence
    PLAN = "plan"  # a paragraph starts: the prediction is its plan, read out through the plan bank
    BREAK = "break"  # planning, inside a paragraph: closer to the break concept than to end-of-text and any step
    FORCED_BREAK = "forced break"  # planning: a step is due but the paragraph already has max_paragraph_steps
    STEP = "step"  # closer to a step sentence than to end-of-text and break: read out through the decoder


@dataclass
class Row:
    """State of one generated solution."""

    gen: Generation
    inputs: list[torch.Tensor]  # every concept fed to the model so far (D,), the problem's sentences first
    plans: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # supplied (text, plan concept), paragraph 1, 2..
    at_paragraph_start: bool = False  # planning: the next prediction is a paragraph's plan
    paragraph: int = 0
    paragraph_steps: int = 0

    def stop(self, reason: StopReason) -> bool:
        self.gen.stop_reason = reason
        return False

    def finish(self) -> Generation:
        """The row's result, with every concept fed to the model as numpy vectors."""
        self.gen.inputs = [v.numpy() for v in self.inputs]
        return self.gen


MAX_LOOP = 4  # longest cycle of steps `loops` looks for


def loops(steps: list[str], max_period: int = MAX_LOOP) -> bool:
    """The solution has started to loop: its last L steps repeat the L steps before them ("A A", "A B A B", ...)
    for some L <= max_period. A step that merely recurs after other steps is not a loop: gold solutions restate
    a rule after a detour (forks: "It leads to a dead end." twice), and a model may restate a rule before moving
    on (a logic-chain Base-LCM that "stopped on a repeat" at an earlier rule answered 12% more problems
    correctly without the stop)."""
    return any(len(steps) >= 2 * n and steps[-n:] == steps[-2 * n:-n] for n in range(1, max_period + 1))


@dataclass(frozen=True)
class StepRule:
    """How one row treats the model's prediction for it (arguments as `ConceptGenerator.generate`'s).

    Args:
        eot_text: the end-of-text sentence. The read-outs generation builds never return it as a step; a decoder
            that writes it anyway (a trained decoder can) ends the solution with it.
        break_concept: (D,) concept fed back when a paragraph ends (planning).
        planning: the model was trained with plans and breaks.
        max_len: the model's context in concepts: a row whose inputs fill it stops ("max_steps").
        eot_threshold, break_threshold: None (default) = the argmax alone decides. A number is a floor: a
            prediction is end-of-text (a break) only if its cosine to that concept also reaches it; below, the
            best of the other kinds wins. A floor above 1 turns the kind off (e.g. 1.01: never end by end-of-text).
    """

    eot_text: str
    break_concept: torch.Tensor
    planning: bool = False
    max_steps: int = 16
    max_len: int = 64
    eot_threshold: float | None = None
    break_threshold: float | None = None
    max_paragraph_steps: int = 9
    stop_on_repeat: bool = True
    feedback: str = "decoded"

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK:
            raise LCMError(f"feedback must be 'decoded' or 'predicted', not {self.feedback!r}")

    def classify(self, row: Row, eot_cos: float, break_cos: float, step_cos: float) -> Kind:
        """What the prediction for `row` is: the argmax of its cosines to the end-of-text concept, to the break
        concept (planning, inside a paragraph: training puts no break before a plan) and `step_cos`, to the best
        sentence it could be read out as (the plan bank's at a paragraph start, else the sentence bank's,
        end-of-text and break excluded). Deciding before the read-out keeps a noisy break (cosine 0.6 to the
        break, 0.5 to end-of-text, 0.4 to the best step) a break: read out, it would be "End of text."."""
        if row.at_paragraph_start and row.paragraph < len(row.plans):
            return Kind.SUPPLIED_PLAN
        cosines = {Kind.PLAN if row.at_paragraph_start else Kind.STEP: step_cos}  # first: a tie goes on
        if self.eot_threshold is None or eot_cos >= self.eot_threshold:
            cosines[Kind.END] = eot_cos
        if self.planning and (self.break_threshold is None or break_cos >= self.break_threshold):
            cosines[Kind.BREAK] = break_cos
        kind = max(cosines, key=cosines.get)
        if kind is Kind.BREAK and row.at_paragraph_start:
            # a second break right after one: training puts a plan here, never a break, and it is no end either
            # (its cosine to end-of-text is the break's own, 0.49, above a poor plan match): read as the plan
            return Kind.PLAN
        if kind is Kind.STEP and self.planning and row.paragraph_steps >= self.max_paragraph_steps:
            return Kind.FORCED_BREAK
        return kind

    def apply(self, row: Row, kind: Kind, pred: np.ndarray, readout: Decoded | None = None) -> bool:
        """Record prediction `pred` (D,) of kind `kind` in `row` (`readout`: its text, for PLAN and STEP), feed back
        the next input; True while the row goes on, False once it stopped (its stop reason set)."""
        row.gen.calls += 1
        if kind is Kind.END:
            return row.stop("end_of_text")
        if kind is Kind.STEP and readout.text == self.eot_text:  # a trained decoder wrote the end: never a step
            return row.stop("end_of_text")
        if kind is Kind.STEP and self.stop_on_repeat and loops([s.text for s in row.gen.steps if not s.is_plan]
                                                               + [readout.text]):
            return row.stop("repetition")
        row.inputs.append(self._record(row, kind, pred, readout))
        if len(row.gen.steps) >= self.max_steps or len(row.inputs) >= self.max_len:
            return row.stop("max_steps")
        return True

    def _record(self, row: Row, kind: Kind, pred: np.ndarray, readout: Decoded | None) -> torch.Tensor:
        """Add the plan / break / step to the row; returns the concept fed back to the model."""
        gen = row.gen
        if kind is Kind.SUPPLIED_PLAN:
            text, vec = row.plans[row.paragraph]
            score = float(F.cosine_similarity(vec, torch.from_numpy(pred), dim=0))
            gen.steps.append(Step(text, pred, score, "supplied", row.paragraph, is_plan=True))
            row.at_paragraph_start = False
            return vec
        if kind in (Kind.BREAK, Kind.FORCED_BREAK):
            gen.breaks_predicted += kind is Kind.BREAK
            gen.breaks_forced += kind is Kind.FORCED_BREAK
            row.paragraph, row.paragraph_steps, row.at_paragraph_start = row.paragraph + 1, 0, True
            return self.break_concept
        if readout is None:
            raise ValueError(f"a {kind.value} needs its read-out (decoded text) to be recorded")
        gen.steps.append(Step(readout.text, pred, readout.score, readout.source, row.paragraph,
                              is_plan=kind is Kind.PLAN))
        if kind is Kind.PLAN:
            row.at_paragraph_start = False
        else:
            row.paragraph_steps += 1
        return self.fed_back(pred, readout.embedding)

    def fed_back(self, pred: np.ndarray, decoded: np.ndarray) -> torch.Tensor:
        """The next input: the decoded text's embedding ("decoded") or the raw prediction ("predicted")."""
        return torch.from_numpy(np.array(pred if self.feedback == "predicted" else decoded, dtype=np.float32))
