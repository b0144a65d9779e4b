"""Tests for messages, tool calls, usage, agent outputs and image loading."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gecko_actors import AgentOutput, ContentBlock, MediaResource, Message, ToolCall, Usage
from gecko_actors.core.messages import to_messages
from gecko_actors.exceptions import ToolArgumentsError, UserError

# Minimal files that start with each format's magic bytes.
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"\x00" * 16
GIF = b"GIF89a" + b"\x01\x00\x01\x00" + b"\x00" * 16
WEBP = b"RIFF" + (20).to_bytes(4, "little") + b"WEBPVP8 " + b"\x00" * 12


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- constructors ----------------------------------------------------------------------------


def test_system_user_assistant_constructors() -> None:
    system = Message.system("be brief")
    assert (system.role, system.content) == ("system", "be brief")

    user = Message.user("hi", name="ann")
    assert (user.role, user.content, user.name) == ("user", "hi", "ann")
    assert user.tool_calls == []

    call = ToolCall(id="c1", name="add", arguments='{"a": 1}')
    assistant = Message.assistant(tool_calls=[call])
    assert assistant.role == "assistant"
    assert assistant.content is None
    assert assistant.tool_calls == [call]
    assert Message.assistant("done").content == "done"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
        ([1, "x", None], [1, "x", None]),
        ({"text": "café"}, {"text": "café"}),
    ],
)
def test_tool_result_encodes_dicts_and_lists_as_json(value: Any, expected: Any) -> None:
    message = Message.tool_result("call-1", value, tool_name="lookup")
    assert message.role == "tool"
    assert message.tool_call_id == "call-1"
    assert message.name == "lookup"
    assert isinstance(message.content, str)
    assert json.loads(message.content) == expected


def test_tool_result_keeps_strings_and_non_ascii_unescaped() -> None:
    assert Message.tool_result("c", "plain text").content == "plain text"
    assert "café" in Message.tool_result("c", {"t": "café"}).content


def test_tool_result_encodes_pydantic_models() -> None:
    class Point(BaseModel):
        x: int
        y: int

    message = Message.tool_result("c", Point(x=1, y=2))
    assert json.loads(message.content) == {"x": 1, "y": 2}


# --- validation ------------------------------------------------------------------------------


def test_tool_message_needs_tool_call_id() -> None:
    with pytest.raises(ValidationError, match="tool_call_id"):
        Message(role="tool", content="x")


@pytest.mark.parametrize("role", ["user", "system", "tool"])
def test_only_assistant_messages_carry_tool_calls(role: str) -> None:
    with pytest.raises(ValidationError, match="only assistant"):
        Message(role=role, content="x", tool_call_id="c", tool_calls=[ToolCall(id="c", name="f")])


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Message(role="robot", content="x")


def test_text_block_needs_text() -> None:
    with pytest.raises(ValidationError, match="needs text"):
        ContentBlock(type="text")


def test_image_block_needs_an_image() -> None:
    with pytest.raises(ValidationError, match="image source"):
        ContentBlock(type="image_url", text="not an image")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "https://example.com/a.png", "data": b64(PNG), "mime_type": "image/png"},
        {},
        {"mime_type": "image/png"},
    ],
    ids=["both", "neither", "mime-only"],
)
def test_media_resource_needs_exactly_one_source(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one source"):
        MediaResource(**kwargs)


def test_media_resource_data_needs_mime_type() -> None:
    with pytest.raises(ValidationError, match="mime_type"):
        MediaResource(data=b64(PNG))


def test_messages_are_frozen() -> None:
    message = Message.user("hi")
    with pytest.raises(ValidationError):
        message.content = "changed"  # type: ignore[misc]


# --- images ----------------------------------------------------------------------------------


def test_user_with_http_url_passes_it_through() -> None:
    url = "https://example.com/cat.png?size=large"
    message = Message.user("what is this?", images=[url], detail="low")
    assert isinstance(message.content, list)
    assert [b.type for b in message.content] == ["text", "image_url"]
    assert message.text == "what is this?"
    assert message.images == [MediaResource(url=url, detail="low")]
    assert message.images[0].data is None


def test_user_with_data_url_keeps_data_and_mime() -> None:
    url = f"data:image/png;base64,{b64(PNG)}"
    message = Message.user("look", images=[url])
    (image,) = message.images
    assert image.mime_type == "image/png"
    assert image.data == b64(PNG)
    assert image.url is None
    assert image.to_url() == url


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("data:image/png;base64,not*valid*base64!", "invalid base64"),
        ("data:;base64," + b64(PNG), "invalid image data URL"),
        ("data:base64," + b64(PNG), "invalid image data URL"),
        ("data:image/png," + b64(PNG), "invalid image data URL"),
    ],
    ids=["bad-base64", "empty-mime", "no-mime", "not-base64"],
)
def test_bad_data_urls_are_user_errors(url: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        Message.user("look", images=[url])


def test_data_url_over_the_limit_is_refused() -> None:
    url = f"data:image/png;base64,{b64(PNG)}"
    with pytest.raises(UserError, match=rf"is {len(PNG)} bytes; the limit is 10"):
        Message.user("look", images=[url], max_image_bytes=10)


@pytest.mark.parametrize(
    ("payload", "mime"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")],
)
def test_local_file_mime_comes_from_magic_bytes(tmp_path, payload: bytes, mime: str) -> None:
    honest = tmp_path / f"honest.{mime.split('/')[1]}"
    honest.write_bytes(payload)
    liar = tmp_path / "liar.bmp"  # the extension says BMP, the bytes say otherwise
    liar.write_bytes(payload)
    no_ext = tmp_path / "noext"
    no_ext.write_bytes(payload)

    message = Message.user("see", images=[honest, str(liar), no_ext], detail="high")
    assert len(message.images) == 3
    for image in message.images:
        assert image.mime_type == mime
        assert image.url is None
        assert base64.b64decode(image.data) == payload
        assert image.detail == "high"


def test_raw_bytes_are_sniffed() -> None:
    (image,) = Message.user("see", images=[GIF]).images
    assert image.mime_type == "image/gif"
    assert base64.b64decode(image.data) == GIF


def test_media_resource_is_passed_through_unchanged() -> None:
    resource = MediaResource(url="https://example.com/x.jpg", detail="auto")
    assert Message.user("x", images=[resource]).images == [resource]


def test_file_over_the_limit_names_size_and_limit(tmp_path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(PNG + b"\x00" * 1000)
    size = path.stat().st_size
    with pytest.raises(UserError) as info:
        Message.user("x", images=[path], max_image_bytes=500)
    text = str(info.value)
    assert str(size) in text
    assert "500" in text
    assert "max_image_bytes" in text  # the hint says how to raise it


def test_file_exactly_at_the_limit_is_accepted(tmp_path) -> None:
    path = tmp_path / "exact.png"
    path.write_bytes(PNG)
    (image,) = Message.user("x", images=[path], max_image_bytes=len(PNG)).images
    assert image.mime_type == "image/png"


def test_missing_path_is_a_user_error(tmp_path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(UserError, match=r"nope\.png") as info:
        Message.user("x", images=[missing])
    assert info.value.path == str(missing)


def test_directory_is_not_an_image(tmp_path) -> None:
    with pytest.raises(UserError, match="is not a file"):
        Message.user("x", images=[tmp_path])


def test_non_image_file_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some notes, nothing to see here")
    with pytest.raises(UserError, match="cannot tell the image type"):
        Message.user("x", images=[path])


def test_unrecognised_bytes_are_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot tell the image type"):
        Message.user("x", images=[b"\x00\x01\x02\x03 not an image"])


# --- views -----------------------------------------------------------------------------------


def test_text_view_joins_text_blocks_and_ignores_images() -> None:
    image = MediaResource(url="https://example.com/a.png")
    message = Message(
        role="user",
        content=[
            ContentBlock(type="text", text="first"),
            ContentBlock(type="image_url", image=image),
            ContentBlock(type="text", text="second"),
        ],
    )
    assert message.text == "first\nsecond"
    assert message.images == [image]


def test_text_and_images_views_of_plain_messages() -> None:
    assert Message.assistant().text == ""
    assert Message.assistant().images == []
    assert Message.user("hello").text == "hello"
    assert Message.user("hello").images == []


# --- OpenAI format ---------------------------------------------------------------------------

CALLS = [
    ToolCall(id="call_1", name="add", arguments='{"a": 1, "b": 2}'),
    ToolCall(id="call_2", name="now"),
]
ALL_KINDS = [
    Message.system("you are terse"),
    Message.user("plain"),
    Message.user("named", name="bob"),
    Message.user(
        "multimodal",
        images=["https://example.com/a.png", f"data:image/png;base64,{b64(PNG)}", JPEG],
        detail="high",
    ),
    Message.user("no detail", images=["https://example.com/b.png"]),
    Message.assistant("answer"),
    Message.assistant(tool_calls=CALLS),
    Message.assistant("thinking out loud", tool_calls=CALLS[:1]),
    Message.tool_result("call_1", {"sum": 3}, tool_name="add"),
    Message.tool_result("call_2", "12:00"),
]
KIND_IDS = [
    "system",
    "user",
    "user-named",
    "multimodal-detail",
    "multimodal-no-detail",
    "assistant",
    "assistant-calls",
    "assistant-text-calls",
    "tool-named",
    "tool",
]


@pytest.mark.parametrize("message", ALL_KINDS, ids=KIND_IDS)
def test_openai_round_trip(message: Message) -> None:
    data = message.to_openai()
    json.dumps(data)  # what is sent to a provider must be JSON-able
    assert Message.from_openai(data) == message


def test_to_openai_shapes() -> None:
    multimodal = ALL_KINDS[3].to_openai()
    assert multimodal["role"] == "user"
    assert multimodal["content"][0] == {"type": "text", "text": "multimodal"}
    assert multimodal["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/a.png", "detail": "high"},
    }
    assert multimodal["content"][2]["image_url"]["url"] == f"data:image/png;base64,{b64(PNG)}"
    assert multimodal["content"][3]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "detail" not in ALL_KINDS[4].to_openai()["content"][1]["image_url"]

    assistant = Message.assistant(tool_calls=CALLS).to_openai()
    assert assistant["content"] is None
    assert assistant["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
    }
    assert "tool_call_id" not in assistant
    assert "name" not in assistant

    tool = Message.tool_result("call_1", "3", tool_name="add").to_openai()
    assert tool == {"role": "tool", "content": "3", "name": "add", "tool_call_id": "call_1"}


def test_from_openai_accepts_bare_image_url_strings_and_dict_arguments() -> None:
    message = Message.from_openai(
        {"role": "user", "content": [{"type": "image_url", "image_url": "https://x.org/a.png"}]}
    )
    assert message.images == [MediaResource(url="https://x.org/a.png")]

    call = ToolCall.from_openai({"id": "c", "function": {"name": "f", "arguments": {"a": 1}}})
    assert call.parse_arguments() == {"a": 1}
    missing = ToolCall.from_openai({"id": "c", "function": {"name": "f", "arguments": None}})
    assert missing.arguments == "{}"


def test_from_openai_on_a_model_dump_object() -> None:
    class Function(BaseModel):
        name: str
        arguments: str

    class FakeToolCall(BaseModel):
        id: str
        type: str = "function"
        function: Function

    class FakeMessage(BaseModel):  # shaped like litellm's / openai's response message
        role: str
        content: str | None = None
        tool_calls: list[FakeToolCall] | None = None
        function_call: Any = None
        reasoning_content: str | None = "private reasoning"

    response = FakeMessage(
        role="assistant",
        content="let me add",
        tool_calls=[FakeToolCall(id="call_9", function=Function(name="add", arguments="{}"))],
    )
    message = Message.from_openai(response)
    assert message == Message.assistant(
        "let me add", tool_calls=[ToolCall(id="call_9", name="add", arguments="{}")]
    )

    plain = Message.from_openai(FakeMessage(role="assistant", content="hi"))
    assert plain == Message.assistant("hi")


# --- tool call arguments ---------------------------------------------------------------------


def test_parse_arguments_valid_object() -> None:
    call = ToolCall(id="c", name="add", arguments='{"a": 1, "b": [2, 3]}')
    assert call.parse_arguments() == {"a": 1, "b": [2, 3]}


@pytest.mark.parametrize("arguments", ["", "   ", "\n"])
def test_parse_arguments_empty_is_empty_dict(arguments: str) -> None:
    assert ToolCall(id="c", name="f", arguments=arguments).parse_arguments() == {}


def test_parse_arguments_malformed_json_names_the_tool() -> None:
    call = ToolCall(id="call_7", name="search_web", arguments='{"q": "cats"')
    with pytest.raises(ToolArgumentsError, match="search_web") as info:
        call.parse_arguments()
    err = info.value
    assert err.tool == "search_web"
    assert err.tool_call_id == "call_7"
    assert "not valid JSON" in str(err)
    assert err.hint


@pytest.mark.parametrize(("arguments", "kind"), [("[1, 2]", "list"), ('"x"', "str"), ("3", "int")])
def test_parse_arguments_non_object_is_an_error(arguments: str, kind: str) -> None:
    call = ToolCall(id="c", name="lookup", arguments=arguments)
    with pytest.raises(ToolArgumentsError, match=f"must be a JSON object, got {kind}") as info:
        call.parse_arguments()
    assert info.value.tool == "lookup"


# --- msgpack ---------------------------------------------------------------------------------


@pytest.mark.parametrize("message", ALL_KINDS, ids=KIND_IDS)
def test_message_msgpack_round_trip_is_exact(message: Message) -> None:
    packed = message.to_msgpack()
    assert isinstance(packed, bytes)
    assert Message.from_msgpack(packed) == message


def test_msgpack_round_trip_keeps_image_bytes(tmp_path) -> None:
    path = tmp_path / "pic.webp"
    path.write_bytes(WEBP)
    message = Message.user("pic", images=[path], detail="low")
    back = Message.from_msgpack(message.to_msgpack())
    assert back == message
    assert base64.b64decode(back.images[0].data) == WEBP
    assert back.images[0].detail == "low"


@pytest.mark.parametrize(
    "usage",
    [Usage(), Usage(requests=2, prompt_tokens=10, completion_tokens=5, total_tokens=15, cost=0.25)],
    ids=["default", "full"],
)
def test_usage_msgpack_round_trip(usage: Usage) -> None:
    back = Usage.from_msgpack(usage.to_msgpack())
    assert back == usage
    assert back.cost == usage.cost


@pytest.mark.parametrize("call", [*CALLS, ToolCall(id="", name="f", arguments="not json")])
def test_tool_call_msgpack_round_trip(call: ToolCall) -> None:
    assert ToolCall.from_msgpack(call.to_msgpack()) == call


def test_content_block_msgpack_round_trip() -> None:
    block = ContentBlock(type="image_url", image=MediaResource(url="https://x.org/a.png"))
    assert ContentBlock.from_msgpack(block.to_msgpack()) == block


class Answer(BaseModel):
    city: str
    population: int
    tags: list[str]
    note: str | None = None


def test_agent_output_msgpack_round_trip_with_structured_model() -> None:
    output = AgentOutput(
        content='{"city": "Oslo"}',
        tool_calls=CALLS,
        usage=Usage(requests=1, prompt_tokens=3, completion_tokens=4, total_tokens=7),
        structured=Answer(city="Oslo", population=700000, tags=["cold"]),
        messages=ALL_KINDS,
        finish_reason="max_turns",
    )
    back = AgentOutput.from_msgpack(output.to_msgpack())
    # The structured object comes back as plain data, not as the class.
    assert not isinstance(back.structured, Answer)
    assert back.structured == {"city": "Oslo", "population": 700000, "tags": ["cold"], "note": None}
    assert Answer.model_validate(back.structured) == output.structured
    # Everything else is exact.
    assert back.model_copy(update={"structured": output.structured}) == output
    assert back.usage.cost is None


def test_agent_output_msgpack_round_trip_plain() -> None:
    output = AgentOutput(content="hi", structured={"a": [1, 2.5, None]})
    back = AgentOutput.from_msgpack(output.to_msgpack())
    assert back == output
    assert AgentOutput.from_msgpack(AgentOutput().to_msgpack()) == AgentOutput()


# --- usage -----------------------------------------------------------------------------------


def test_usage_add_sums_counts() -> None:
    total = Usage(requests=1, prompt_tokens=10, completion_tokens=2, total_tokens=12) + Usage(
        requests=2, prompt_tokens=5, completion_tokens=3, total_tokens=8
    )
    assert total == Usage(requests=3, prompt_tokens=15, completion_tokens=5, total_tokens=20)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [(None, None, None), (None, 0.5, 0.5), (0.5, None, 0.5), (0.25, 0.5, 0.75), (0.0, None, 0.0)],
)
def test_usage_add_costs(left: float | None, right: float | None, expected: float | None) -> None:
    assert (Usage(cost=left) + Usage(cost=right)).cost == expected


# --- to_messages -----------------------------------------------------------------------------


def test_to_messages_string() -> None:
    assert to_messages("hello") == [Message.user("hello")]


def test_to_messages_message() -> None:
    message = Message.system("s")
    assert to_messages(message) == [message]


def test_to_messages_role_dict() -> None:
    assert to_messages({"role": "assistant", "content": "ok"}) == [Message.assistant("ok")]


def test_to_messages_input_dict() -> None:
    assert to_messages({"input": "hi"}) == [Message.user("hi")]
    assert to_messages({"input": [{"role": "system", "content": "s"}, Message.user("u")]}) == [
        Message.system("s"),
        Message.user("u"),
    ]


def test_to_messages_mixed_list() -> None:
    value = [
        Message.system("s"),
        {"role": "user", "content": "u"},
        {"role": "tool", "content": "1", "tool_call_id": "c"},
    ]
    assert to_messages(value) == [
        Message.system("s"),
        Message.user("u"),
        Message.tool_result("c", "1"),
    ]
    assert to_messages(tuple(value)) == to_messages(value)


def test_to_messages_empty_list_is_a_user_error() -> None:
    with pytest.raises(UserError, match="empty list"):
        to_messages([])


@pytest.mark.parametrize("value", [42, 4.2, None, b"bytes"], ids=["int", "float", "none", "bytes"])
def test_to_messages_wrong_type_is_a_user_error(value: Any) -> None:
    with pytest.raises(UserError, match="as agent input"):
        to_messages(value)


@pytest.mark.parametrize(
    "value",
    [
        {"content": "no role"},
        [{"content": "no role"}],
        ["a plain string in a list"],
        [Message.user("u"), 3],
    ],
    ids=["dict", "dict-in-list", "str-in-list", "int-in-list"],
)
def test_to_messages_items_without_role_are_user_errors(value: Any) -> None:
    with pytest.raises(UserError, match="into a message"):
        to_messages(value)


@pytest.mark.parametrize(
    "value",
    [{"role": "tool", "content": "x"}, {"role": "robot", "content": "x"}],
    ids=["tool-without-id", "bad-role"],
)
def test_to_messages_invalid_dicts_are_user_errors(value: dict[str, Any]) -> None:
    with pytest.raises(UserError, match="invalid message"):
        to_messages(value)


def test_file_name_is_not_trusted_for_the_image_type(tmp_path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("just some text, not a picture")
    with pytest.raises(UserError, match="cannot tell the image type"):
        Message.user("look", images=[fake])


def test_data_url_must_hold_an_image() -> None:
    import base64

    text = base64.b64encode(b"plain text").decode()
    with pytest.raises(UserError, match="does not hold"):
        Message.user("look", images=[f"data:image/png;base64,{text}"])
