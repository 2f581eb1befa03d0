"""Trajectory validation: every bad input of issue 5 (acceptance 5) gets a precise message."""

import copy
import json

import pytest

from a1jax.data.schema import TrajectoryError, parse_line, read_jsonl, validate

TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {}}}]


def good():
    return {"id": "traj-7", "domain": "kb", "tools": copy.deepcopy(TOOLS), "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": "", "reasoning_content": "search first",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "search", "arguments": '{"q": "x", "n": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "search", "content": "found"},
        {"role": "assistant", "content": "It is x."}]}


def error_of(traj, source="data.jsonl", line=12):
    with pytest.raises(TrajectoryError) as e:
        validate(traj, source=source, line=line)
    return str(e.value)


def test_valid_trajectory_is_normalised():
    out = validate(good())
    assert out["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"q": "x", "n": 2}
    assert good()["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"q": "x", "n": 2}'


def test_malformed_json_line():
    with pytest.raises(TrajectoryError) as e:
        parse_line(b'{"id": "a", "messages": [}', source="data.jsonl", line=3)
    assert str(e.value) == "data.jsonl:3: malformed JSON: Expecting value (column 26)"


def test_invalid_utf8_line():
    with pytest.raises(TrajectoryError) as e:
        parse_line(b'{"id": "caf\xe9"}', source="data.jsonl", line=4)
    assert str(e.value) == "data.jsonl:4: invalid UTF-8 at byte 11: b'\\xe9\"}'"


def test_line_that_is_not_an_object():
    with pytest.raises(TrajectoryError, match=r"^data.jsonl:5: expected a JSON object, got list$"):
        parse_line(b"[1, 2]", source="data.jsonl", line=5)


def test_unknown_role():
    t = good()
    t["messages"][1]["role"] = "human"
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 1: unknown role 'human' "
                           "(expected one of system, user, assistant, tool)")


def test_system_message_not_first():
    t = good()
    t["messages"].insert(2, {"role": "system", "content": "late"})
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 2: "
                           "system message must be the first message")


def test_tool_message_with_no_preceding_call():
    t = good()
    t["messages"].insert(2, {"role": "tool", "tool_call_id": "c0", "content": "orphan"})
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 2: "
                           "tool message with no preceding tool call to answer")
    t = good()
    t["messages"][3]["tool_call_id"] = "c9"
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 3: tool_call_id 'c9' "
                           "matches no open call of the preceding assistant turn")
    t = good()
    t["messages"].insert(4, {"role": "tool", "tool_call_id": "c1", "content": "answered twice"})
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 4: "
                           "tool message with no preceding tool call to answer")


def test_tool_call_naming_an_unknown_tool():
    t = good()
    t["messages"][2]["tool_calls"][0]["function"]["name"] = "browse"
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 2: tool call 0 names "
                           "tool 'browse', which is not in 'tools'")


def test_arguments_that_are_not_valid_json():
    t = good()
    t["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"q": "x",}'
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 2: tool call 0 (search): "
                           "arguments are not valid JSON: Expecting property name enclosed in "
                           "double quotes (char 10)")
    t["messages"][2]["tool_calls"][0]["function"]["arguments"] = '["x"]'
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': message 2: tool call 0 (search): "
                           "arguments must be a JSON object, got list")


def test_nothing_to_train_on():
    t = good()
    t["messages"] = t["messages"][:2] + [{"role": "assistant", "content": "  "}]
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': nothing to train on: no "
                           "assistant message with content, reasoning or tool calls")


def test_no_real_user_query():
    t = good()
    t["messages"] = [t["messages"][0], {"role": "assistant", "content": "hi"}]
    assert error_of(t) == ("data.jsonl:12: trajectory 'traj-7': no user message: the chat format "
                           "needs a real user query")


@pytest.mark.parametrize("mutate,expected", [
    (lambda t: t.pop("id"), "data.jsonl:12: 'id' must be a non-empty string"),
    (lambda t: t.update(domain=3), "data.jsonl:12: trajectory 'traj-7': 'domain' must be a "
                                   "non-empty string"),
    (lambda t: t.update(messages=[]), "data.jsonl:12: trajectory 'traj-7': 'messages' must be a "
                                      "non-empty list"),
    (lambda t: t["tools"].append({"name": "x"}),
     "data.jsonl:12: trajectory 'traj-7': tools[1] must be {\"type\": \"function\", "
     "\"function\": {...}}"),
    (lambda t: t["messages"][1].update(content=["a"]),
     "data.jsonl:12: trajectory 'traj-7': message 1: 'content' must be a string"),
    (lambda t: t["messages"][4].update(content="ok<|im_end|>"),
     "data.jsonl:12: trajectory 'traj-7': message 4: 'content' contains the reserved turn "
     "marker '<|im_end|>'"),
    (lambda t: t["messages"][3].update(name="other"),
     "data.jsonl:12: trajectory 'traj-7': message 3: tool message name 'other' does not match "
     "its call ('search')"),
])
def test_other_structural_errors(mutate, expected):
    t = good()
    mutate(t)
    assert error_of(t) == expected


def test_read_jsonl_locates_every_bad_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    t = good()
    bad_role = good()
    bad_role["messages"][1]["role"] = "bot"
    path.write_bytes(json.dumps(t).encode() + b"\n\n{oops\n" + json.dumps(bad_role).encode()
                     + b"\n\xff\n")
    loaded = list(read_jsonl(path))
    assert [(x.line, x.trajectory is not None) for x in loaded] == [
        (1, True), (3, False), (4, False), (5, False)]
    first = len(json.dumps(t)) + 1
    assert [x.offset for x in loaded] == [0, first + 1, first + 7,
                                          first + 7 + len(json.dumps(bad_role)) + 1]
    assert [str(x.error).replace(str(path), "F") for x in loaded[1:]] == [
        "F:3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        "F:4: trajectory 'traj-7': message 1: unknown role 'bot' "
        "(expected one of system, user, assistant, tool)",
        "F:5: invalid UTF-8 at byte 0: b'\\xff'"]
