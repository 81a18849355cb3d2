"""Corpus builders: where documents come from.

- `GsmSymbolic`: reasoning-gym's gsm_symbolic generator (offline, deterministic for a seed).
- `DatasetSource`: any `datasets` source -- local jsonl/json/csv/parquet files, or a hub name when online --
  with configurable prompt / steps / answer fields.
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Literal

from lcm.errors import LCMError
from lcm.planners.paragraphs import split_paragraphs
from lcm.text import cap_all, split_and_cap
from lcm.train.documents import Document

ANSWER_LINE = re.compile(r"^####\s*(.+)$")


class CorpusSource(ABC):
    """Yields raw documents; the DataModule cleans, splits and encodes them."""

    # how problem text becomes prompt concepts ("sentences", "lines" or "auto", `lcm.text.split_and_cap`):
    # recorded in checkpoints, so generation splits a user's problem the same way
    prompt_format: str = "sentences"

    @abstractmethod
    def documents(self, max_chars: int) -> Iterator[Document]:
        """Documents whose sentences are already capped at `max_chars`."""

    @abstractmethod
    def describe(self) -> str: ...


def solution_to_paragraphs(solution: str, max_chars: int) -> tuple[list[list[str]], str | None]:
    """Step-by-step solution text -> (paragraphs of steps, answer from a `#### N` line if present).

    Solution lines are steps; blank lines and section headers separate paragraphs; the `#### N`
    line stays as the final step (the model learns to state the answer) and N is returned too.
    """
    paragraphs = [cap_all(p, max_chars) for p in split_paragraphs(solution)]
    paragraphs = [p for p in paragraphs if p]
    answer = None
    if paragraphs:
        m = ANSWER_LINE.match(paragraphs[-1][-1])
        answer = m.group(1).strip() if m else None
    return paragraphs, answer


class GsmSymbolic(CorpusSource):
    """reasoning-gym `gsm_symbolic`: grade-school maths from GSM8K templates with fresh numbers.

    Args:
        n: number of problems generated (duplicates by question text are dropped later).
        seed: generator seed.
    """

    def __init__(self, n: int = 2000, seed: int = 0):
        if n < 1:
            raise LCMError(f"GsmSymbolic needs n >= 1 problems, got {n}")
        self.n = n
        self.seed = seed

    def describe(self) -> str:
        return f"reasoning-gym gsm_symbolic (n={self.n}, seed={self.seed})"

    def documents(self, max_chars: int) -> Iterator[Document]:
        import reasoning_gym

        data = reasoning_gym.create_dataset("gsm_symbolic", size=self.n, seed=self.seed)
        for i in range(self.n):
            row = data[i]
            paragraphs, answer = solution_to_paragraphs(row["metadata"]["answer_cot"], max_chars)
            yield Document(prompt=split_and_cap(row["question"], max_chars), paragraphs=paragraphs,
                           answer=answer if answer is not None else str(row["answer"]),
                           meta={"source": "gsm_symbolic", "index": i})


_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def check_utf8(path: Path, chunk: int = 1 << 20) -> None:
    """Fail with the byte offset of the first invalid sequence instead of a deep decoder traceback."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                # e.object = bytes held back from the previous block + this block
                at = offset - (len(e.object) - len(block)) + e.start
                raise LCMError(f"{path} is not valid UTF-8 (byte {e.object[e.start]:#04x} at offset {at}); "
                               "re-save it as UTF-8") from None
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise LCMError(f"{path} is not valid UTF-8 (truncated multi-byte sequence at its end); re-save it as UTF-8") from None


def _kind(value) -> str:
    """The JSON shape Arrow cannot mix within one column: a list, an object, or a scalar (text and numbers mix)."""
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else \
        "missing/null" if value is None else "text or a number"


def check_jsonl(path: Path, fields: list[str]) -> None:
    """One line naming the file and line of the first malformed record -- invalid JSON, not an object, or a
    field whose JSON shape differs from its first occurrence -- run when the JSON builder failed, whose own
    message ("Trailing data at position N", "Column(/x) changed from string to object in row N") names no
    line. Returns quietly when it finds nothing (the builder's message is reported then)."""
    import json

    first: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LCMError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise LCMError(f"{path}:{lineno}: a JSON object per line is expected, got {_kind(row)}")
            for name in fields:
                kind = _kind(row.get(name))
                if kind == "missing/null":
                    continue
                seen, at = first.setdefault(name, (kind, lineno))
                if kind != seen:
                    raise LCMError(f"{path}:{lineno}: field {name!r} is {kind} here but {seen} on line {at}")


class DatasetSource(CorpusSource):
    """Any `datasets` source with a prompt field, a steps field and an optional answer field.

    Args:
        path: local .jsonl/.json/.csv/.parquet file (or a folder/glob of them), or a hub dataset name.
        split: split to read ("train" for local files).
        name: hub dataset configuration name.
        prompt_field: column holding the problem text.
        steps_field: column holding the steps: a list of strings, or one text to segment.
        answer_field: column holding the final answer, or None.
        steps_format: how a text steps field is segmented: "lines", "sentences", or "auto"
            (lines when the text has line breaks, else sentences). List fields are used as given.
        prompt_format: how the prompt text is split into concepts: "sentences" (pysbd), "lines" (one concept
            per non-empty line: facts, rules, a question), or "auto" (lines when the prompt has line breaks).
            Generation splits a user's problem the same way.
        answer_template: final step appended when the answer is not already the last step
            ("" or None: the answer is kept as metadata only). Typed `str`, not `str | None`: jsonargparse
            re-reads an optional string as YAML, which turned "#### {answer}" into a comment, i.e. null.
        limit: read at most this many rows.
    """

    def __init__(self, path: str, split: str = "train", name: str | None = None, prompt_field: str = "question",
                 steps_field: str = "steps", answer_field: str | None = "answer",
                 steps_format: Literal["auto", "lines", "sentences"] = "auto",
                 prompt_format: Literal["auto", "lines", "sentences"] = "sentences",
                 answer_template: str = "#### {answer}", limit: int | None = None):
        self.path = path
        self.split = split
        self.name = name
        self.prompt_field = prompt_field
        self.steps_field = steps_field
        self.answer_field = answer_field
        self.steps_format = steps_format
        self.prompt_format = prompt_format
        self.answer_template = answer_template
        self.limit = limit

    def describe(self) -> str:
        return f"datasets source {self.path} [{self.split}]"

    def _load(self):
        import datasets

        local = Path(self.path)
        if local.suffix.lower() in _LOCAL_BUILDERS or local.exists():
            if not local.exists():
                raise LCMError(f"data file {local} does not exist")
            files = sorted(p for p in (local.rglob("*") if local.is_dir() else [local])
                           if p.suffix.lower() in _LOCAL_BUILDERS)
            if not files:
                raise LCMError(f"no .jsonl/.json/.csv/.parquet files in {local}")
            for f in files:
                if f.stat().st_size == 0:
                    raise LCMError(f"data file {f} is empty")
                if f.suffix.lower() != ".parquet":
                    check_utf8(f)
            builder = _LOCAL_BUILDERS[files[0].suffix.lower()]
            args: dict[str, Any] = {"path": builder, "data_files": [str(f) for f in files], "split": "train"}
        else:
            if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
                raise LCMError(f"{self.path!r} is not a local file and the hub is offline (HF_HUB_OFFLINE=1)")
            args = {"path": self.path, "name": self.name, "split": self.split}
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()  # its own "Failed to load ..." line would double ours
        try:
            return datasets.load_dataset(**args)
        except Exception as e:  # noqa: BLE001 - malformed files, bad hub names: a config problem for the user
            for f in args.get("data_files", []):  # name the file and line where we can find the culprit
                if f.endswith(".jsonl"):
                    check_jsonl(Path(f), [x for x in (self.prompt_field, self.steps_field, self.answer_field) if x])
            root = e
            while root.__cause__ is not None or root.__context__ is not None:  # the error that names the row
                root = root.__cause__ or root.__context__
            msg = (str(root).strip().splitlines() or [""])[0]
            raise LCMError(f"could not read dataset {self.path}: {type(root).__name__}: {msg[:300]}") from e

    def documents(self, max_chars: int) -> Iterator[Document]:
        data = self._load()
        wanted = [self.prompt_field, self.steps_field] + ([self.answer_field] if self.answer_field else [])
        missing = [f for f in wanted if f not in data.column_names]
        if missing:
            raise LCMError(f"dataset {self.path} has no column(s) {missing} (it has {data.column_names}); "
                           "set data.source.init_args.prompt_field / steps_field / answer_field")
        n = len(data) if self.limit is None else min(self.limit, len(data))
        for i, row in enumerate(data.select(range(n))):
            yield self._document(row, i, max_chars)

    def _document(self, row: dict, index: int, max_chars: int) -> Document:
        prompt = row[self.prompt_field]
        prompt = split_and_cap(prompt if isinstance(prompt, str) else "", max_chars, self.prompt_format)
        steps = row[self.steps_field]
        answer = None
        if isinstance(steps, (list, tuple)):
            paragraphs = [cap_all([s for s in steps if isinstance(s, str)], max_chars)]
        elif isinstance(steps, str):
            mode = self.steps_format
            if mode == "auto":
                mode = "lines" if "\n" in steps.strip() else "sentences"
            if mode == "lines":
                paragraphs, answer = solution_to_paragraphs(steps, max_chars)
            else:
                paragraphs = [split_and_cap(steps, max_chars)]
        else:
            paragraphs = []
        paragraphs = [p for p in paragraphs if p]
        if self.answer_field and row.get(self.answer_field) not in (None, ""):
            answer = str(row[self.answer_field]).strip()
        if answer is not None and self.answer_template and paragraphs:
            final = self.answer_template.format(answer=answer)
            if paragraphs[-1][-1] != final:
                paragraphs[-1].append(final)
        return Document(prompt=prompt, paragraphs=paragraphs, answer=answer, meta={"source": self.path, "index": index})
