"""Corpus builders and the DataModule on real (tiny) data with the real encoder."""
import json

import numpy as np
import pytest
import torch

from lcm.concepts import ConceptType
from lcm.errors import LCMError
from lcm.module import target_mask
from lcm.train import ConceptDataModule, DatasetSource, GsmSymbolic


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"question": f"Ann has {i} pens. She buys {i + 2} more. How many pens?",
         "steps": [f"She has {i} + {i + 2} = {2 * i + 2} pens."], "answer": str(2 * i + 2)} for i in range(30)]


def dm_for(source, tmp_path, encoder, **kw):
    return ConceptDataModule(source, encoder=encoder, cache_dir=str(tmp_path / "cache"), show_progress=False,
                             batch_size=4, **kw)


def test_gsm_symbolic_documents_and_disjoint_splits(tmp_path, encoder):
    docs = list(GsmSymbolic(n=10, seed=1).documents(256))
    assert all(d.prompt and d.steps and d.steps[-1] == f"#### {d.answer}" for d in docs)
    dm = dm_for(GsmSymbolic(n=60, seed=1), tmp_path, encoder, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    prompts = {s: {d.prompt_text for d in dm.corpus.docs[s]} for s in ("train", "val", "test")}
    assert prompts["train"] and prompts["val"] and prompts["test"]
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert not (prompts["val"] & prompts["test"])


def test_batches_pad_and_mask_only_steps_and_eot(tmp_path, encoder):
    dm = dm_for(DatasetSource(str(write_jsonl(tmp_path / "d.jsonl", ROWS))), tmp_path, encoder)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x, types = batch["x"], batch["types"]
    assert x.shape[0] == 4 and x.shape[2] == 384 and x.dtype == torch.float32
    assert (x[types == -1] == 0).all()  # padding is zero
    mask = target_mask(types)
    nxt = types[:, 1:]
    assert torch.equal(mask, (nxt == ConceptType.STEP) | (nxt == ConceptType.EOT))
    assert not mask[nxt == ConceptType.PROMPT].any()
    # each document: prompt sentences, its step, the "#### answer" step, end-of-text
    ids, t = dm.corpus.seqs["train"][0]
    assert list(t[-3:]) == [ConceptType.STEP, ConceptType.STEP, ConceptType.EOT]
    assert dm.corpus.texts[ids[-2]].startswith("#### ")


def test_text_steps_are_segmented(tmp_path):
    rows = [{"q": "Solve it.", "sol": "First line.\nSecond line.\n#### 3"}, {"q": "Prose.", "sol": "One. Two. Three."}]
    src = DatasetSource(str(write_jsonl(tmp_path / "t.jsonl", rows)), prompt_field="q", steps_field="sol",
                        answer_field=None)
    a, b = list(src.documents(256))
    assert a.steps == ["First line.", "Second line.", "#### 3"] and a.answer == "3"
    assert b.steps == ["One.", "Two.", "Three."]


def test_csv_source(tmp_path):
    (tmp_path / "d.csv").write_text("question,steps,answer\nHow many?,One line.,1\n", encoding="utf-8")
    (doc,) = DatasetSource(str(tmp_path / "d.csv")).documents(256)
    assert doc.prompt == ["How many?"] and doc.steps == ["One line.", "#### 1"]


def test_missing_fields_name_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q?", "solution": ["s"]}])
    with pytest.raises(LCMError, match=r"no column\(s\) \['steps', 'answer'\].*solution"):
        list(DatasetSource(str(path)).documents(256))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps({"question": "x", "steps": ["y"]}).encode() + b"\n{\"question\": \"caf\xe9\"}\n")
    with pytest.raises(LCMError, match="not valid UTF-8.*offset"):
        list(DatasetSource(str(path)).documents(256))


def test_utf8_offset_across_chunks(tmp_path):
    from lcm.train.corpus import check_utf8

    path = tmp_path / "u.txt"
    path.write_bytes(b"ab\xc3(" + b"x" * 10)  # 0xc3 starts a 2-byte sequence that never completes
    for chunk in (2, 3, 1 << 20):
        with pytest.raises(LCMError, match="byte 0xc3 at offset 2"):
            check_utf8(path, chunk=chunk)


def test_malformed_jsonl_names_the_file_and_line(tmp_path):
    """The JSON builder's own message names a byte position or a row of a block, not a line of the file."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "steps": ["s"]}\n\n{"question": "unterminated\n')
    with pytest.raises(LCMError, match=r"bad.jsonl:3: not valid JSON \(Invalid control character at, column 27\)"):
        list(DatasetSource(str(path)).documents(256))
    # the line finder run when the builder fails: a column whose JSON shape changes (Arrow cannot mix them)
    from lcm.train.corpus import check_jsonl

    rows = [{"question": f"q{i}?", "steps": ["s"], "answer": str(i)} for i in range(30)]
    rows[25]["answer"] = {"value": 1}
    path = write_jsonl(tmp_path / "shapes.jsonl", rows)
    with pytest.raises(LCMError, match=r"shapes.jsonl:26: field 'answer' is an object here but text or a number"):
        check_jsonl(path, ["question", "steps", "answer"])
    check_jsonl(write_jsonl(tmp_path / "ok.jsonl", ROWS), ["question", "steps", "answer"])  # nothing to report


@pytest.mark.parametrize("prompt_format, expected", [
    ("lines", ["Facts:", "x is an ancestor of y.", "From x and y follows z.", "Question: is z true?"]),
    ("auto", ["Facts:", "x is an ancestor of y.", "From x and y follows z.", "Question: is z true?"]),
])
def test_multi_line_prompts_keep_their_lines(tmp_path, prompt_format, expected):
    """pysbd glues a header onto the next line and splits after one-letter variables; prompt_format keeps lines."""
    text = "Facts:\nx is an ancestor of y.\nFrom x and y follows z.\nQuestion: is z true?"
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": text, "steps": ["z is true."], "answer": None}])
    doc = next(DatasetSource(str(path), answer_field=None, prompt_format=prompt_format).documents(256))
    assert doc.prompt == expected
    default = next(DatasetSource(str(path), answer_field=None).documents(256))
    assert default.prompt != expected  # the sentence splitter (the default) does not keep them


def test_the_prompt_format_is_recorded_for_generation(tmp_path, encoder):
    rows = [{"question": f"Facts:\nAnn has {i} pens.\nHow many?", "steps": [f"{i}."], "answer": None}
            for i in range(30)]
    source = DatasetSource(str(write_jsonl(tmp_path / "d.jsonl", rows)), answer_field=None, prompt_format="lines")
    dm = dm_for(source, tmp_path, encoder)
    dm.setup("fit")
    assert dm.handoff().meta()["prompt_format"] == "lines" and dm.corpus.docs["train"][0].prompt[0] == "Facts:"
    stored = dm_for(None, tmp_path, encoder, store=str(dm.corpus.folder))
    assert stored.prompt_format == "lines"  # a store carried elsewhere keeps the record


def test_long_documents_wrap_or_truncate(tmp_path, encoder):
    long_prompt = {"question": " ".join(f"Fact {i} is true." for i in range(40)), "steps": ["s."], "answer": "1"}
    data = str(write_jsonl(tmp_path / "d.jsonl", [long_prompt] + ROWS))
    wrap = dm_for(DatasetSource(data), tmp_path, encoder, max_seq_len=16)
    wrap.setup("fit")
    # 40 prompt sentences + step + answer + end-of-text = 43 concepts -> windows [0, 16) [15, 31) [30, 43)
    # (each starts on the previous one's last concept): the first two hold only prompt (dropped), the last
    # keeps the step, the answer and the end-of-text as targets
    assert wrap.corpus.stats["wrapped"] == 1 and wrap.corpus.stats["no_target"] == 2
    only = dm_for(DatasetSource(str(write_jsonl(tmp_path / "o.jsonl", [long_prompt]))), tmp_path, encoder,
                  max_seq_len=16, val_fraction=0.0, test_fraction=0.0)
    assert len(only.train_targets()) == 3
    cut = dm_for(DatasetSource(str(write_jsonl(tmp_path / "o.jsonl", [long_prompt]))), tmp_path, encoder,
                 max_seq_len=16, val_fraction=0.0, test_fraction=0.0, long_documents="truncate")
    with pytest.raises(LCMError, match="only 0 training target"):
        cut.train_targets()
    assert cut.corpus.stats["truncated"] == 1 and cut.corpus.stats["no_target"] == 1


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(LCMError, match="is empty"):
        list(DatasetSource(str(tmp_path / "empty.jsonl")).documents(256))
    with pytest.raises(LCMError, match="does not exist"):
        list(DatasetSource(str(tmp_path / "nope.jsonl")).documents(256))


def test_blank_documents_skipped_with_count_or_error(tmp_path, encoder):
    blank = [{"question": "  ", "steps": ["x"], "answer": None}, {"question": "Q?", "steps": ["", "  "], "answer": ""}]
    dm = dm_for(DatasetSource(str(write_jsonl(tmp_path / "mixed.jsonl", blank + ROWS))), tmp_path, encoder)
    dm.setup("fit")
    assert dm.corpus.stats["blank"] == 2
    only_blank = dm_for(DatasetSource(str(write_jsonl(tmp_path / "blank.jsonl", blank))), tmp_path, encoder)
    with pytest.raises(LCMError, match="no usable training documents.*2 blank"):
        only_blank.setup("fit")


def test_long_sentences_are_resplit_in_documents(tmp_path, encoder):
    rows = [{"question": "Summarize. " + "very long words " * 1000, "steps": ["ok " * 5000], "answer": "1"}]
    (doc,) = DatasetSource(str(write_jsonl(tmp_path / "long.jsonl", rows))).documents(200)
    assert all(len(s) <= 200 for s in doc.prompt + doc.steps) and len(doc.steps) > 50


def test_normalizer_inputs_and_bank(tmp_path, encoder):
    dm = dm_for(DatasetSource(str(write_jsonl(tmp_path / "d.jsonl", ROWS))), tmp_path, encoder)
    dm.setup("fit")
    targets = dm.train_targets()
    assert targets.shape[1] == 384 and np.isfinite(targets).all()
    bank = dm.bank()
    assert "End of text." in bank.texts and len(bank.texts) == len(set(bank.texts)) == len(bank.vectors)
