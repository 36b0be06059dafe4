"""Snippet-citation parsing on adversarial answers; each dr-tulu parser bug has its own case."""

from __future__ import annotations

import dataclasses

import pytest

from hubtools.citations import (Claim, answer_block, malformed, parse_claims, parse_ids, source_ids,
                                source_passages)

TOOLS = """<tool_output>
<snippet id=S1>
Title: Eiffel Tower
Snippet: The Eiffel Tower is 330 metres tall.
</snippet>
<snippet id="S2">Gustave Eiffel's company built the tower for the 1889 World's Fair.</snippet>
<webpage id='W1'>The tower opened to the public on 15 May 1889.</webpage>
</tool_output>
Extra line [S9] and id: S8 are plain text."""


def answer(body: str, think: str = "Let me read the sources.") -> str:
    return f"<think>{think}</think>\n<answer>{body}</answer>"


def cited(body: str) -> list[Claim]:
    return [c for c in parse_claims(answer(body)) if c.cited]


def test_multi_id_keeps_the_first_id():
    # dr-tulu loses S1 from id="S1,S2"
    assert cited('<snippet id="S1,S2">It is 330 m tall.</snippet>') == [Claim("It is 330 m tall.", ("S1", "S2"))]
    assert cited("<snippet id=S1,S2>Tall.</snippet>")[0].ids == ("S1", "S2")


@pytest.mark.parametrize("attrs", ['id="S1, S2"', "id='S1, S2'", "id=S1 S2", 'id = "S1" , "S2"', "id='S1','S2'",
                                   'ids="S1;S2"', 'ID="S1,S2"', 'id=" S1 ,S2 ,"', 'id="S1,S2,S1"'])
def test_spaced_quoted_and_repeated_ids(attrs):
    # dr-tulu misses id="S1, S2"
    assert parse_ids(f" {attrs}") == ("S1", "S2")
    assert cited(f"<snippet {attrs}>It is tall.</snippet>")[0].ids == ("S1", "S2")


def test_tag_case_and_spacing():
    assert cited("<SNIPPET id=S1 >It is tall.</Snippet >")[0] == Claim("It is tall.", ("S1",))


def test_uncited_sentences_are_claims_glue_is_not():
    claims = parse_claims(answer(
        'In short, <snippet id=S1>the tower is 330 metres tall.</snippet> It was painted red in 1889. '
        'And <snippet id=S2>Eiffel\'s firm built it</snippet>.\n- Paris loves it'))
    assert claims == [Claim("the tower is 330 metres tall.", ("S1",)), Claim("It was painted red in 1889."),
                      Claim("Eiffel's firm built it", ("S2",))]  # "In short,", "And", "- Paris loves it" are glue


def test_a_sentence_next_to_a_snippet_is_still_uncited():
    claims = parse_claims(answer("<snippet id=S1>It is 330 m tall</snippet> and aliens built it in 1700."))
    assert claims == [Claim("It is 330 m tall", ("S1",)), Claim("and aliens built it in 1700.")]


def test_nested_snippets_are_flattened_never_counted_twice():
    # dr-tulu misses nested tags
    body = "<snippet id=S2>Eiffel's firm built it <snippet id=S1>and it is tall</snippet> for the fair</snippet>"
    assert parse_claims(answer(body)) == [Claim("and it is tall", ("S1",)),
                                          Claim("Eiffel's firm built it for the fair", ("S2",))]
    assert malformed(body) == ["snippets are nested"]


def test_duplicate_claims_stay_apart():
    # dr-tulu collapses duplicate claim texts
    same = "<snippet id=S1>It is tall.</snippet> <snippet id=S1>It is tall.</snippet>"
    assert cited(same) == [Claim("It is tall.", ("S1",))] * 2
    other_ids = "<snippet id=S1>It is tall.</snippet> <snippet id=S2>It is tall.</snippet>"
    assert [c.ids for c in cited(other_ids)] == [("S1",), ("S2",)]


def test_the_think_section_is_never_parsed():
    # dr-tulu parses claims from the whole response, think included
    think = "<snippet id=S1>The tower is 330 m tall.</snippet> So the tower is very tall indeed."
    assert parse_claims(answer("<snippet id=S2>Eiffel's firm built it.</snippet>", think=think)) == [
        Claim("Eiffel's firm built it.", ("S2",))]
    # an answer block inside the reasoning is reasoning
    assert parse_claims("<think><answer><snippet id=S1>It is tall.</snippet></answer></think>") == []
    assert parse_claims("<think>unfinished <answer><snippet id=S1>It is tall.</snippet></answer>") == []


def test_no_answer_two_answers_or_unclosed_answer_give_no_claims():
    one = "<snippet id=S1>It is tall.</snippet>"
    assert parse_claims("<snippet id=S1>It is tall.</snippet> outside any answer block here") == []
    assert parse_claims(f"<answer>{one}</answer><answer>{one}</answer>") == []
    assert parse_claims(f"<answer>{one}") == []
    assert parse_claims(f"<answer>{one}</answer>") == [Claim("It is tall.", ("S1",))]  # no reasoning at all


def test_text_around_the_answer_is_ignored_by_the_parser_refused_when_strict():
    text = "Here is what I found for you:\n<answer><snippet id=S1>It is tall.</snippet></answer> Hope it helps!"
    assert parse_claims(text) == [Claim("It is tall.", ("S1",))]
    assert answer_block(text, strict=True) is None
    assert answer_block("<think>x</think>\n <answer>a</answer>\n", strict=True) == "a"


def test_hallucinated_id_is_parsed_and_absent_from_the_sources():
    (claim,) = cited("<snippet id=S1,S7>It is tall.</snippet>")
    assert claim.ids == ("S1", "S7") and not set(claim.ids) <= source_ids(TOOLS)


def test_malformed_tags():
    unclosed = "<snippet id=S1>It is 330 metres tall"
    assert parse_claims(answer(unclosed)) == [Claim("It is 330 metres tall")]  # no credit for a broken citation
    assert malformed(unclosed) == ["a snippet is not closed"]
    stray = "It was built for the fair.</snippet> It opened to the public in 1889."
    assert parse_claims(answer(stray)) == [Claim("It was built for the fair."),
                                           Claim("It opened to the public in 1889.")]
    assert malformed(stray) == ["a </snippet> closes nothing"]
    no_ids = '<snippet>It is 330 metres tall.</snippet> <snippet id="">The firm built the tower.</snippet>'
    assert parse_claims(answer(no_ids)) == [Claim("It is 330 metres tall."), Claim("The firm built the tower.")]
    assert malformed(no_ids) == ["a snippet has no ids"] * 2
    empty = "<snippet id=S1></snippet><snippet id=S2> ... </snippet>"
    assert parse_claims(answer(empty)) == []
    assert malformed(empty) == ["snippet id=S1 wraps no text", "snippet id=S2 wraps no text"]
    assert malformed("<snippet id=S1>It is tall.</snippet> It opened in 1889.") == []


def test_source_passages_and_ids():
    passages = source_passages(TOOLS)
    assert set(passages) == source_ids(TOOLS) == {"S1", "S2", "W1"}  # "[S9]" and "id: S8" lines are not sources
    assert passages["S1"] == "Title: Eiffel Tower\nSnippet: The Eiffel Tower is 330 metres tall."
    assert source_passages("<snippet id=A-0>one</snippet><snippet id=A-0>two</snippet>") == {"A-0": "one\ntwo"}
    assert source_passages('<snippet id="A-1" score=0.5>three</snippet>') == {"A-1": "three"}
    assert source_ids(None) == source_ids("") == set()


def test_claims_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Claim("x", ("S1",)).text = "y"
