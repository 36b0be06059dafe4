import pytest

from hubtools.scoring import (
    Grade, answer_matches, contains_answer, exact_match, extract_boxed, extract_final_answer,
    extract_tagged, grade_answer, is_not_attempted, normalize_answer, parse_grader_label,
    reasoning_reaches_gold, token_f1,
)

C, I, NA = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED


@pytest.mark.parametrize("raw, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("an apple a day", "apple day"),
    ("Theater", "theater"),                      # article only as a whole word
    ("Zürich", "zurich"),
    ("São Paulo", "sao paulo"),
    ("Straße", "strasse"),
    ("ｆｕｌｌｗｉｄｔｈ", "fullwidth"),           # NFKC
    ("U.S.A.", "usa"),
    ("O’Brien", "obrien"),
    ("Jean-Paul  Sartre", "jean paul sartre"),
    ("Tom & Jerry", "tom and jerry"),
    (r"\text{Paris}", "paris"),
    (r"\frac{1}{2}", "frac 1 2"),
    ("1,000,000 people", "1000000 people"),
    ("１，０００", "1000"),
    ("1, 2, 3", "1 2 3"),                        # list commas are not thousands separators
    ("12,34", "12 34"),
    ("3.0", "3"),
    ("2.50", "2.5"),
    ("3.5", "3.5"),                              # decimal point kept: not "35"
    ("in 1990.", "in 1990"),
    ("1.2.0", "1.2.0"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("pred, golds, expected", [
    ("the Zurich", "Zürich", True),
    ("1000", "1,000", True),
    ("3", "3.0", True),
    ("35", "3.5", False),
    ("Paris", ["Lutetia", "Paris, France", "paris"], True),
    ("Paris France", ["Paris, France"], True),
    ("Lyon", ["Paris", "Paris, France"], False),
    ("", ["the"], False),                        # aliases that normalize to "" never match
    ("Paris", [], False),
])
def test_exact_match(pred, golds, expected):
    assert exact_match(pred, golds) is expected


@pytest.mark.parametrize("pred, golds, expected", [
    ("Paris", "Paris", 1.0),
    ("the city of Paris", "Paris", 0.5),         # tokens city, of, paris: P=1/3, R=1
    ("Barack Obama", ["Obama", "Barack Hussein Obama"], 0.8),
    ("Lyon", "Paris", 0.0),
    ("Paris", [], 0.0),
    ("paris paris", "paris", 2 / 3),             # multiset overlap: P=1/2, R=1
])
def test_token_f1(pred, golds, expected):
    assert token_f1(pred, golds) == pytest.approx(expected)


@pytest.mark.parametrize("text, golds, expected", [
    ("The capital is Paris.", "Paris", True),
    ("a comparison of cities", "Paris", False),   # no match inside a word
    ("Parisian food", "Paris", False),
    ("He lived in New York City", "New York", True),
    ("York, New", "New York", False),             # token sequence, not bag of words
    ("born in Zürich", ["Zurich"], True),
    ("about 1,000 people", "1000", True),
    ("anything", [], False),
])
def test_contains_answer(text, golds, expected):
    assert contains_answer(text, golds) is expected


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{Paris}", "Paris"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\text{Paris}}", r"\text{Paris}"),
    (r"\boxed {  42 }", "42"),
    (r"\fbox{Rome}", "Rome"),
    (r"\boxed{A} then \boxed{B}", "B"),           # last box wins
    (r"\boxed{\boxed{x}}", "x"),
    ("no box here", None),
    (r"\boxed{Paris", None),                     # unbalanced
    (r"\boxed{A} and \boxed{\frac{1}{2}", None),  # the last box decides, even when unbalanced
    (r"\boxed{}", ""),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, tag, expected", [
    ("<answer> Paris </answer>", "answer", "Paris"),
    ("<answer>A</answer> later <answer>B</answer>", "answer", "B"),
    ("<ANSWER>multi\nline</ANSWER>", "answer", "multi\nline"),
    ("<answer>unclosed", "answer", None),
    ("<final>x</final>", "final", "x"),
    ("<final>x</final>", "answer", None),
])
def test_extract_tagged(text, tag, expected):
    assert extract_tagged(text, tag) == expected


@pytest.mark.parametrize("text, expected", [
    (r"<think>maybe \boxed{Lyon}</think> It is \boxed{Paris}.", "Paris"),
    (r"<think>I think \boxed{Lyon}</think> Final: Paris", "Lyon"),    # nothing after: box in think counts
    (r"reasoning \boxed{Lyon} more</think>\boxed{Paris}", "Paris"),   # opener in the prompt
    (r"<think>\boxed{Lyon}</think><answer>Paris</answer>", "Paris"),  # after-think tag beats think box
    (r"<answer>Lyon</answer> \boxed{Paris}", "Paris"),               # box beats tag
    ("<answer>Paris</answer>", "Paris"),
    (r"<think>truncated \boxed{Lyon}", "Lyon"),                      # unclosed think
    ("<think>hmm</think> Paris", None),
    ("", None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize("text", [
    "Unknown", "UNKNOWN.", r"\boxed{Unknown}", r"\boxed{ unknown }", r"\boxed {\text{Unknown}}",
    "I don't know", "I don’t know.", "I do not know the answer to this question.", "Sorry, I don't know.",
    "I'm not sure", "I’m not sure.", "not sure", "Cannot be determined.",
    "The answer cannot be determined from the given information.", "I cannot answer that.",
    "I can't answer", "No answer", "I have no idea", "It is unknown.",
    r"<think>Paris? Lyon?</think> \boxed{Unknown}", "<think>Paris?</think> I don't know.",
    "<answer>I am not sure</answer>",
])
def test_not_attempted(text):
    assert is_not_attempted(text)


@pytest.mark.parametrize("text", [
    "Known as Paris", "Unknown Soldier", "I know: Paris", "Not sure, but probably Paris",
    "I don't know much, but Paris", "No", "None", "Paris", "",
    r"I don't know at first... \boxed{Paris}",       # only the box is judged
    r"<think>I don't know</think> \boxed{Paris}",
])
def test_attempted(text):
    assert not is_not_attempted(text)


@pytest.mark.parametrize("answer, golds, expected", [
    ("Barack Obama", "Obama", True),
    ("Paris (France)", "Paris", True),
    ("It is the city of Paris", "Paris", True),
    ("about 1,000", "1000", True),                 # thousands comma is not a list separator
    ("about 1,000 people", "1000", False),         # a unit word the gold lacks is extra content
    ("Paris or Lyon", "Paris", False),
    ("Paris, Lyon", "Paris", False),
    ("Honolulu, Hawaii", "Honolulu", False),       # documented precision-over-recall trade-off
    ("Paris; Lyon", "Paris", False),
    ("Paris/Lyon", "Paris", False),
    ("either Paris", "Paris", False),
    ("not Paris", "Paris", False),
    ("Simon and Garfunkel", "Simon & Garfunkel", True),   # "and" inside the alias is fine
    ("the famous old capital city of France named Paris", "Paris", True),  # 8 tokens ("the" dropped)
    ("famous old capital city in north of France: Paris", "Paris", False),  # 9 tokens > 8
    ("comparison", "Paris", False),
])
def test_answer_matches(answer, golds, expected):
    assert answer_matches(answer, golds) is expected


# What GRPO would try: every guess list, range, magnitude, unit or hedge around the gold is INCORRECT.
@pytest.mark.parametrize("answer, golds", [
    ("Paris Lyon Marseille", "Paris"),               # the example
    ("Paris Lyon Marseille", "Lyon"),
    ("Paris-Lyon", "Paris"),
    ("Paris-Lyon", "Lyon"),                          # a dash joins the gold to a candidate
    ("Paris – Lyon", "Lyon"),
    ("Paris/Lyon", "Lyon"),
    ("Paris or Lyon", "Lyon"),
    ("Paris, Lyon", "Lyon"),
    ("either Paris or Lyon", "Paris"),
    ("Paris (or Lyon)", "Paris"),
    ("Paris (maybe Lyon)", "Paris"),
    ("Paris (Lyon)", "Lyon"),                        # the anchor is before the qualifier
    ("Unknown Paris", "Paris"),                      # abstention and answer at once
    ("Paris? Lyon?", "Paris"),
    ("Paris? Lyon?", "Lyon"),
    ("Paris. Lyon.", "Lyon"),                        # two sentences, two answers
    ("Paris... Lyon", "Lyon"),
    ("1. Paris 2. Lyon", "Lyon"),
    ("1) Paris 2) Lyon", "Lyon"),
    ("Paris + Lyon", "Lyon"),
    ("Paris & Lyon", "Lyon"),
    ("Paris\nLyon", "Lyon"),
    ("Paris，Lyon", "Lyon"),                          # fullwidth comma
    ("Paris Lyon Paris", "Lyon"),
    ("Cairo, Al-Qahira", ["Cairo", "Al-Qahira"]),    # alias list copied from the golds
    ("probably Paris", "Paris"),                      # hedges
    ("It could be Paris", "Paris"),
    ("my guess is Paris", "Paris"),
    ("not Lyon but Paris", "Paris"),
    ("Paris Hilton", "Paris"),                       # the gold inside a longer (wrong) entity
    ("Bowes-Lyon", "Lyon"),
    ("Paris is the capital", "Paris"),               # subject-first: the anchor is the end
    ("1939-1945", "1945"),                           # ranges
    ("1939–1945", "1945"),
    ("1939 - 1945", "1945"),
    ("1939 1945", "1945"),
    ("from 1939 to 1945", "1945"),
    ("between 1939 and 1945", "1945"),
    ("12 million", "12"),                            # magnitudes and units
    ("twelve million", ["12", "twelve"]),
    ("12 km", "12"),
    ("12 (million)", "12"),
    ("3.5 km", "3.5"),
    ("12 twelve", ["12", "twelve"]),
])
def test_answer_matches_rejects_candidate_lists(answer, golds):
    assert answer_matches(answer, golds) is False
    assert grade_answer(f"\\boxed{{{answer}}}", golds) is I


@pytest.mark.parametrize("answer, golds", [
    ("Paris", "Paris"),
    ("Barack Obama", "Obama"),
    ("Barack Hussein Obama", "Obama"),
    ("Paris (France)", "Paris"),
    ("Paris (France).", "Paris"),
    ("The capital is Paris.", "Paris"),
    ("It is the city of Paris", "Paris"),
    ("Jean-Paul Sartre", "Sartre"),                  # a dash elsewhere is fine
    ("J. K. Rowling", "Rowling"),                     # initials are not sentence ends
    ("The author is J. K. Rowling.", "J. K. Rowling"),
    ("Paris?", "Paris"),                              # one hedged candidate
    ("in 1945.", "1945"),
    ("about 12", "12"),
    ("12", ["12", "twelve"]),
    (r"\text{Paris}", "Paris"),
    (r"\text{Paris (France)}", "Paris"),
    ("Paris (Lyon)", "Paris"),                       # a qualifier is not a candidate: the anchor is before it
    ("Tomb of the Unknown Soldier", "Unknown Soldier"),
    ("Honolulu, Hawaii", ["Honolulu", "Honolulu, Hawaii"]),  # exact alias match always counts
    ("Lyon Paris", "Paris"),                         # read as one name ending in the gold, like "Barack Obama"
])
def test_answer_matches_keeps_single_answers(answer, golds):
    assert answer_matches(answer, golds) is True
    assert grade_answer(f"\\boxed{{{answer}}}", golds) is C


@pytest.mark.parametrize("completion, golds, kwargs, expected", [
    (r"<think>capital of France</think> \boxed{Paris}", ["Paris"], {}, C),
    (r"\boxed{Lyon}", ["Paris"], {}, I),
    (r"\boxed{Unknown}", ["Paris"], {}, NA),
    (r"<think>Paris</think> \boxed{I'm not sure}", ["Paris"], {}, NA),
    ("The answer is Paris.", ["Paris"], {}, I),                       # no final answer: no credit
    ("I don't know", ["Paris"], {}, I),                               # abstention must be boxed too
    ("Paris", ["Paris"], {"require_box": False}, C),
    ("<think>hmm</think> I don't know", ["Paris"], {"require_box": False}, NA),
    (r"\boxed{Paris, Lyon, or Nice}", ["Paris"], {}, I),
    (r"\boxed{Unknown}", ["unknown"], {}, NA),                        # abstention first
    (r"\boxed{cannot be determined}", ["cannot be determined"], {}, NA),
    (r"\boxed{Unknown Soldier}", ["Unknown Soldier"], {}, C),
    (r"\boxed{1,000}", ["1000"], {}, C),
    (r"\boxed{Zurich}", ["Zürich"], {}, C),
    # unanswerable (SelfAware): abstaining is right, any attempt is wrong
    (r"\boxed{Unknown}", [], {}, NA),
    (r"\boxed{42}", [], {}, I),
    (r"\boxed{Paris}", ["Paris"], {"answerable": False}, I),
    (r"\boxed{I don't know}", ["Paris"], {"answerable": False}, NA),
])
def test_grade_answer(completion, golds, kwargs, expected):
    assert grade_answer(completion, golds, **kwargs) is expected


def test_grade_is_str_enum():
    assert Grade("NOT_ATTEMPTED") is NA and NA == "NOT_ATTEMPTED"


@pytest.mark.parametrize("completion, golds, expected", [
    (r"<think>The capital is Paris. Or is it Lyon?</think> \boxed{Lyon}", "Paris", True),  # a doubt is no commitment
    (r"<think>It is Paris.</think> So the answer is \boxed{Lyon}", "Paris", True),    # the lead-in is the answer's
    (r"<think>The capital of France is Paris</think>\n\boxed{Lyon}", "Paris", True),
    (r"The capital is Paris. \boxed{Lyon}", "Paris", True),                           # no think section
    ("I believe it is Paris", "Paris", True),                                        # no final answer
    (r"<think>\boxed{Paris}</think> \boxed{Lyon}", "Paris", True),                    # earlier box is reasoning
    (r"<think>It is Paris. Then again the question asks about the capital city of this country.</think> \boxed{Lyon}",
     "Paris", True),                                                                 # long sentences commit to nothing
    (r"<think>It could be Paris, Lyon or Marseille.</think> \boxed{Lyon}", "Paris", False),  # a candidate list
    (r"<think>Paris or Lyon.</think> \boxed{Lyon}", "Paris", False),
    (r"<think>Maybe Paris.</think> \boxed{Lyon}", "Paris", False),                     # a hedge
    (r"<think>Paris? Lyon?</think> \boxed{Nice}", "Paris", False),                     # questions
    (r"<think>Paris. Lyon. Marseille.</think> \boxed{Nice}", "Paris", False),          # only the last commitment
    (r"<think>Paris. Lyon. Marseille.</think> \boxed{Nice}", "Marseille", True),       # ... counts: no gain
    (r"<think>It is Paris. Let me check.</think> \boxed{Lyon}", "Paris", False),       # the documented price
    ("I believe it is Paris, but I'm running out of", "Paris", False),               # truncated hedge
    (r"Thinking about Lyon. \boxed{Paris}", "Paris", False),                         # only the final box has it
    (r"<think>Lyon</think> \boxed{Lyon} Paris", "Paris", False),                     # text after the box: not reasoning
    (r"<think>a comparison</think> \boxed{Lyon}", "Paris", False),                   # whole tokens only
    (r"<think>Paris Hilton.</think> \boxed{Lyon}", "Paris", False),
    (r"<think>Paris</think> \boxed{Lyon}", [], False),
])
def test_reasoning_reaches_gold(completion, golds, expected):
    assert reasoning_reaches_gold(completion, golds) is expected


LETTERED = {"A": "CORRECT", "B": "INCORRECT", "C": "NOT_ATTEMPTED"}


@pytest.mark.parametrize("text, labels, expected", [
    ("A", LETTERED, "CORRECT"),
    ("  c.\n", LETTERED, "NOT_ATTEMPTED"),
    ("**B**", LETTERED, "INCORRECT"),
    ("(C)", LETTERED, "NOT_ATTEMPTED"),
    ("Grade: A", LETTERED, "CORRECT"),
    ("**Label:** incorrect", LETTERED, "INCORRECT"),
    ("not attempted", LETTERED, "NOT_ATTEMPTED"),
    ("NOT_ATTEMPTED", ["CORRECT", "INCORRECT", "NOT_ATTEMPTED"], "NOT_ATTEMPTED"),
    ("yes!", ["yes", "no"], "yes"),
])
def test_parse_grader_label(text, labels, expected):
    assert parse_grader_label(text, labels) == expected


@pytest.mark.parametrize("text, labels", [
    ("B is wrong, the answer is C", LETTERED),
    ("The answer is A", LETTERED),
    ("A: CORRECT", LETTERED),
    ("A\nBecause the response matches.", LETTERED),
    ("D", LETTERED),
    ("CORRECTLY", LETTERED),
    ("", LETTERED),
    ("A", ["CORRECT", "INCORRECT"]),             # letters only count for lettered labels
    ("Label: Grade: A", LETTERED),               # one prefix only
])
def test_parse_grader_label_rejects(text, labels):
    with pytest.raises(ValueError, match="cannot parse grader label"):
        parse_grader_label(text, labels)
