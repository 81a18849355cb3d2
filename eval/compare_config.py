"""The compare config (eval/configs/*.yaml): dataclasses parsed by jsonargparse, as every config of the project.

A key the schema does not know, or a value of the wrong type, is an `LCMError` that names the key (the `lcm`
command prints it as one `error: ...` line, exit code 2). Any field can also be set on the command line
(`lcm eval compare -c eval/configs/logic.yaml --problems 10 --soft_thinking.top_k 20`).
"""
from __future__ import annotations

from argparse import ArgumentError
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse.typing import PositiveInt

from lcm.errors import LCMError
from lcm.token_model import SoftThinking


@dataclass
class Sampling:
    """Sampling settings of a concept system, named as `ConceptGenerator.generate` names them; None keeps the
    checkpoint's own (a setting the model kind does not use is an error of `generate`)."""

    noise: float | None = None  # Base-LCM: sample by adding N(0, noise^2) in normalized space
    guidance: float | None = None  # diffusion: classifier-free guidance scale
    ddim_steps: int | None = None  # diffusion: DDIM steps
    eta: float | None = None  # diffusion: DDIM eta
    plan_source: str | None = None  # diffusion planning models: "sampled" or "regressed" plans

    def kwargs(self) -> dict:
        """The settings written in the config (those that override the checkpoint's), as the keywords of
        `ConceptGenerator.generate` and of the model's `denoiser_evals`: the one place they are passed on."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ConceptSystem:
    name: str
    config: str  # training config (`lcm fit -c`)
    sampling: Sampling = field(default_factory=Sampling)


@dataclass
class TokenSystem:
    config: str  # training config of the token baseline
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256


@dataclass
class Controls:
    """Zero-parameter and closed-set controls, as rows of the table (`lcm.eval.controls`)."""

    follower: bool = True  # the encoder follower (tasks with facts and a question: forks, logic chains)
    bank_restricted: bool = False  # the token model choosing each line from the concept model's bank (costly)
    bank_problems: PositiveInt = 20  # ... on the first n problems only (every step scores every bank line)
    # (iii) the first concept system read out by a trained sentence decoder (open vocabulary) instead of retrieval:
    # the decoder's training config (same data source as the concept systems), trained per seed with its own budget
    decoder: str | None = None
    decoder_overrides: list[str] = field(default_factory=list)  # appended to the decoder's `lcm fit`


@dataclass
class CompareConfig:
    """One comparison: systems, held-out problems, samples per problem, where the report goes."""

    name: str
    out_dir: str
    concept: list[ConceptSystem]
    token: TokenSystem
    # the settings object `TokenLM.generate` takes, defined once in lcm.token_model: each default is the official Soft
    # Thinking code's and names its source; `noise` / `gumbel_temperature` / `dirichlet_alpha`: the noisy variant's
    soft_thinking: SoftThinking = field(default_factory=SoftThinking)
    controls: Controls = field(default_factory=Controls)
    problems: PositiveInt = 100  # held-out test problems (the first n of the shared test split)
    k: PositiveInt = 8  # samples per problem (pass@k, diversity)
    max_steps: int = 24  # concept steps per solution (plans included)
    seed: int = 0  # training and sampling seed (of a one-seed comparison)
    seeds: list[int] | None = None  # several seeds: every system trained and sampled once per seed (overrides seed)
    device: str = "cpu"
    concept_greedy: bool = True  # a greedy row (noise 0, one solution) per sampled Base-LCM system, as the token model has
    runs_dir: str = "runs/compare"
    train_overrides: list[str] = field(default_factory=list)  # appended to every `lcm fit` (e.g. a GPU size)
    # learning rates tried per system on the first seed; each system keeps its lowest validation loss
    # (`lcm.eval.lr_sweep`); None: every system at its config's learning rate
    lr_sweep: list[float] | None = None
    curve_problems: int = 50  # problems per checkpoint for the entropy-performance curve (greedy)
    show_progress: bool = True

    @classmethod
    def load(cls, path: str | Path) -> "CompareConfig":
        return load_config(["-c", str(path)])


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="lcm eval compare", description="Concept models vs a token baseline of equal size.",
                       exit_on_error=False)
    p.add_argument("-c", "--config", action=ActionConfigFile, required=True, help="compare config (eval/configs/*.yaml)")
    p.add_class_arguments(CompareConfig)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (same as --show_progress false)")
    return p


def load_config(argv: list[str] | None = None) -> CompareConfig:
    """`-c CONFIG.yaml` plus command-line overrides (None: sys.argv[1:]) -> a checked CompareConfig; bad input
    -> LCMError."""
    p = parser()
    try:
        ns = p.parse_args(argv)
    except ArgumentError as e:  # jsonargparse: a bad key, value or file, in several lines
        raise LCMError(f"compare config: {' '.join(str(e).split())}") from e
    no_progress = ns.pop("no_progress")
    ns.pop("config")
    cfg = CompareConfig(**vars(p.instantiate(ns)))
    cfg.show_progress = cfg.show_progress and not no_progress
    if not cfg.concept:
        raise LCMError("compare config: `concept` lists no concept systems")
    if cfg.seeds is not None and (not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds)):
        raise LCMError(f"compare config: seeds must be distinct and not empty, got {cfg.seeds}")
    if cfg.lr_sweep is not None and (len(set(cfg.lr_sweep)) < 2 or min(cfg.lr_sweep) <= 0
                                     or len(set(cfg.lr_sweep)) != len(cfg.lr_sweep)):
        raise LCMError(f"compare config: lr_sweep needs at least 2 distinct positive learning rates, got {cfg.lr_sweep}")
    return cfg
