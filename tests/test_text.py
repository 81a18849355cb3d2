from lcm.planners.paragraphs import split_paragraphs
from lcm.text import cap_length, split_and_cap, split_sentences
from lcm.train.corpus import solution_to_paragraphs


def test_sentences_offline():
    assert split_sentences("Tom has 3.5 apples. He eats 2! How many are left?") == [
        "Tom has 3.5 apples.", "He eats 2!", "How many are left?"]
    assert split_sentences("   \n ") == []


def test_absurdly_long_sentence_is_resplit_without_losing_text():
    words = " ".join(f"word{i}" for i in range(2000))  # ~17,000 characters, no punctuation
    pieces = cap_length(words, 256)
    assert len(pieces) > 60 and all(0 < len(p) <= 256 for p in pieces)
    assert " ".join(pieces) == words
    huge = cap_length("x" * 300_000, 256)  # linear, no recursion limit
    assert len(huge) == 1172 and "".join(huge) == "x" * 300_000
    no_spaces = "x" * 10_000
    pieces = cap_length(no_spaces, 200)
    assert all(len(p) <= 200 for p in pieces) and "".join(pieces) == no_spaces


def test_cap_prefers_sentence_then_clause_boundaries():
    s = "First part is here, " * 10 + "and the end."
    pieces = cap_length(s, 100)
    assert all(p.endswith(",") or p == pieces[-1] for p in pieces)


def test_segment_modes():
    text = "Step one.\n\nStep two. Still two.\n"
    assert split_and_cap(text, 256, "lines") == ["Step one.", "Step two. Still two."]
    assert split_and_cap(text, 256) == ["Step one.", "Step two.", "Still two."]


def test_paragraphs_edge_cases():
    assert split_paragraphs("") == []
    assert split_paragraphs("\n\n  \n") == []  # empty paragraphs vanish
    assert split_paragraphs("a\nb\nc") == [["a", "b", "c"]]  # no breaks: one paragraph
    assert split_paragraphs("a\n\n\n\nb") == [["a"], ["b"]]
    # numbered / headed sections start a paragraph and stay as its first line
    text = "Let's solve this:\n1. Initial amounts:\nx = 3\n2. Totals:\ny = 4\n#### 7"
    assert split_paragraphs(text) == [["Let's solve this:"], ["1. Initial amounts:", "x = 3"],
                                      ["2. Totals:", "y = 4", "#### 7"]]
    assert split_paragraphs("Header only:") == [["Header only:"]]


def test_solution_keeps_answer_line():
    paragraphs, answer = solution_to_paragraphs("He has 3+4=7 apples.\n#### 7", 256)
    assert paragraphs == [["He has 3+4=7 apples.", "#### 7"]] and answer == "7"
    assert solution_to_paragraphs("no answer here", 256)[1] is None
