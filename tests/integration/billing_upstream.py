#!/usr/bin/env python3
"""A provider-like upstream that bills the way real providers bill, for the budget tests.

It speaks four wire formats: OpenAI chat completions (POST .../chat/completions), OpenAI
Responses (POST .../responses), Anthropic Messages (POST .../messages) and Gemini
(POST .../models/{model}:generateContent and :streamGenerateContent?alt=sse), each buffered and
streamed with the provider's own event sequence.

- It parses the body with Python's json module, which keeps the LAST of two duplicate keys (as
  Go's and JavaScript's parsers do): a gateway that read the first one would be fooled.
- It bills every input token of the native body: all text of the request (messages, system,
  tools, schemas, tool calls and results, every other field), at 4 characters a token, plus 765
  tokens per image.
- It generates every choice, each the full output cap it was sent, and bills them all: chat n
  (or max(n, best_of)), Gemini generationConfig.candidateCount. The cap is max_tokens /
  max_completion_tokens (chat), max_output_tokens (Responses), max_tokens (Anthropic, which
  refuses a request without it, as the real API does) or generationConfig.maxOutputTokens
  (Gemini); without one, 4096 (OpenAI) or 8192 (Gemini, whose real default is larger still).
- A model whose name contains "nousage" answers without usage (buffered and streamed); one
  whose name contains "badusage" reports usage with counts a strict reader must not trust: an
  output count as a string, an input count negative (in each format's own usage fields).
- Anthropic and Gemini only: a model whose name contains "cache" serves the system prompt from
  the provider's cache: written on its first use (Anthropic: cache_creation_input_tokens), read
  afterwards (cache_read_input_tokens; Gemini: cachedContentTokenCount, part of
  promptTokenCount). Anthropic's streamed message_delta then repeats input_tokens (its usage is
  cumulative) without the cache counts, which stand as message_start gave them.
- Gemini only: "think" spends half of each candidate's cap on thoughts (thoughtsTokenCount,
  billed as output), "tooluse" adds 100 tool-use prompt tokens (toolUsePromptTokenCount, billed
  as input), "lateusage" streams its final usageMetadata in a chunk of its own after the chunk
  with the finishReason.
- Anthropic and Gemini only: "halfusage" reports the input side of usage but not the output
  (Anthropic: no output_tokens, no usage in message_delta; Gemini: no candidatesTokenCount),
  "cutoff" breaks a stream after all its text was sent, before the end events (Anthropic: no
  content_block_stop, message_delta, message_stop; Gemini: no finishReason, no final usage).
- Images are billed at a model's own rate: 765 tokens each, or 25,501 for a model whose name
  contains "imgmini" (OpenAI's gpt-4o-mini: 2,833 + 5,667 per 512 px tile, a 1024 px square).
- OpenAI chat and Responses only: "zerousage" reports 0 output tokens (completion_tokens,
  output_tokens) for an answer whose output was generated and billed; "toolonly" answers chat
  with tool calls only (no text), buffered and streamed; "empty" answers with empty text, billed
  and reported as 0 output tokens; "down" answers 503 to everything (and bills nothing).
- GET /billed returns the running total: {"requests", "prompt_tokens", "completion_tokens",
  "cache_write_tokens", "cache_read_tokens"}; prompt_tokens counts every input token, cache
  writes and reads included (the last two say how many of them a cache price applies to).

Usage: billing_upstream.py PORT
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LOCK = threading.Lock()
BILLED = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_write_tokens": 0,
          "cache_read_tokens": 0}
CACHED = set()  # system prompts in the provider's cache

# Keys that frame a message rather than carry text the model reads.
FRAMING = {"role", "content", "type", "text", "parts", "cache_control"}
# Parameters that are not text.
PARAMS = {"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
          "max_output_tokens", "store",
          "best_of", "temperature", "top_p", "seed", "user", "metadata", "stop", "logit_bias"}
ANTHROPIC_PARAMS = {"model", "stream", "max_tokens", "temperature", "top_p", "top_k",
                    "stop_sequences", "metadata", "service_tier"}
# Anthropic refuses a field it does not know (400 "Extra inputs are not permitted").
ANTHROPIC_FIELDS = ANTHROPIC_PARAMS | {"messages", "system", "tools", "tool_choice", "thinking",
                                       "container", "mcp_servers"}
# generationConfig fields that are text the model reads; the others are parameters.
GEMINI_TEXT_CONFIG = {"responseJsonSchema", "responseSchema"}
WORD = "tok "  # one token


def text_chars(v):
    if isinstance(v, str):
        return len(v)
    if isinstance(v, dict):
        n = 0
        for k, x in v.items():
            if k in ("image_url", "role", "source", "inlineData", "fileData", "cache_control"):
                continue
            n += (0 if k in FRAMING else len(k)) + text_chars(x)
        return n
    if isinstance(v, list):
        return sum(text_chars(x) for x in v)
    return len(json.dumps(v))


def images(v):
    if isinstance(v, dict):
        own = (v.get("type") in ("image_url", "image", "input_image") or "inlineData" in v or
               "fileData" in v)
        return (1 if own else 0) + sum(images(x) for x in v.values())
    if isinstance(v, list):
        return sum(images(x) for x in v)
    return 0


def image_rate(model):
    return 25501 if "imgmini" in model else 765


def input_tokens(billable, model=""):
    return (text_chars(billable) + 3) // 4 + image_rate(model) * images(billable) + 3


def cache_split(model, system, prompt):
    """(cache write, cache read) tokens of `prompt`: the system prompt, for a "cache" model."""
    if "cache" not in model or not system:
        return 0, 0
    tokens = min(prompt, (text_chars(system) + 3) // 4)
    key = model + "\0" + json.dumps(system, sort_keys=True)
    with LOCK:
        seen = key in CACHED
        CACHED.add(key)
    return (0, tokens) if seen else (tokens, 0)


def bill(prompt, completion, cache_write=0, cache_read=0):
    with LOCK:
        BILLED["requests"] += 1
        BILLED["prompt_tokens"] += prompt
        BILLED["completion_tokens"] += completion
        BILLED["cache_write_tokens"] += cache_write
        BILLED["cache_read_tokens"] += cache_read


def pieces(text, n=4):
    """`text` in about n stream deltas."""
    size = max(1, -(-len(text) // n))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            self.send_json(200, dict(BILLED))

    def start_stream(self):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def chunk(self, s):
        b = s.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        try:
            req = json.loads(raw)  # duplicate keys: the last one wins
        except ValueError:
            self.send_json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        if not isinstance(req, dict):
            self.send_json(400, {"error": {"message": "not an object",
                                           "type": "invalid_request_error"}})
            return
        path = urlsplit(self.path).path
        if path.endswith("/messages"):
            self.anthropic(req)
            return
        if "/models/" in path and ":" in path.rsplit("/", 1)[-1]:
            model, method = unquote(path.rsplit("/", 1)[-1]).rsplit(":", 1)
            self.gemini(req, model, method)
            return
        model = str(req.get("model", ""))
        if "down" in model:
            self.send_json(503, {"error": {"message": "overloaded", "type": "server_error"}})
            return
        billable = {k: v for k, v in req.items() if k not in PARAMS}
        prompt = input_tokens(billable, model)
        responses = path.endswith("/responses")
        per_choice = (req.get("max_output_tokens") if responses else
                      req.get("max_completion_tokens") or req.get("max_tokens")) or 4096
        if "empty" in model:
            per_choice = 0
        choices = max(int(req.get("n") or 1), int(req.get("best_of") or 1))
        completion = int(per_choice) * choices
        bill(prompt, completion)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        if "zerousage" in model:
            usage = {"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt}
        with_usage = "nousage" not in model
        if "badusage" in model:
            usage = {"prompt_tokens": -prompt, "completion_tokens": str(completion),
                     "total_tokens": str(prompt + completion)}
        word = WORD
        if responses:
            self.answer_responses(req, model, prompt, completion, usage, with_usage, word)
            return
        tool_only = "toolonly" in model

        def call(i):
            # A tool call whose arguments are the generated tokens.
            return {"index": 0, "id": "call_%d" % i, "type": "function",
                    "function": {"name": "weather",
                                 "arguments": json.dumps({"city": word * int(per_choice)})}}

        if req.get("stream") is True:
            self.start_stream()
            for i in range(choices):
                delta = ({"content": None, "tool_calls": [call(i)]} if tool_only else
                         {"content": word * int(per_choice)})
                ev = {"id": "x", "object": "chat.completion.chunk", "model": model,
                      "choices": [{"index": i, "delta": delta}]}
                self.chunk("data: " + json.dumps(ev) + "\n\n")
            if with_usage:
                self.chunk("data: " + json.dumps({"id": "x", "choices": [], "usage": usage}) +
                           "\n\n")
            self.chunk("data: [DONE]\n\n")
            self.end_stream()
            return
        def message(i):
            if tool_only:
                return {"role": "assistant", "content": None, "tool_calls": [call(i)]}
            return {"role": "assistant", "content": word * int(per_choice)}

        answer = {"id": "x", "object": "chat.completion", "model": model,
                  "choices": [{"index": i, "finish_reason": "tool_calls" if tool_only else "length",
                               "message": message(i)} for i in range(choices)]}
        if with_usage:
            answer["usage"] = usage
        self.send_json(200, answer)

    def answer_responses(self, req, model, prompt, completion, usage, with_usage, word):
        """The OpenAI Responses API's shape: one output message; usage as input/output tokens."""
        if usage is not None and "prompt_tokens" in usage:
            usage = {"input_tokens": usage["prompt_tokens"],
                     "output_tokens": usage["completion_tokens"],
                     "total_tokens": usage["total_tokens"]}
        text = word * completion
        item = {"type": "message", "id": "msg_x", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        response = {"id": "resp_x", "object": "response", "created_at": 0, "model": model,
                    "status": "completed", "output": [item]}
        if with_usage:
            response["usage"] = usage
        if req.get("stream") is not True:
            self.send_json(200, response)
            return
        self.start_stream()

        def event(name, obj):
            self.chunk("event: %s\ndata: %s\n\n" % (name, json.dumps(obj)))

        started = dict(response, status="in_progress", output=[])
        started.pop("usage", None)
        event("response.created", {"type": "response.created", "response": started})
        event("response.output_text.delta",
              {"type": "response.output_text.delta", "item_id": "msg_x", "output_index": 0,
               "content_index": 0, "delta": text})
        event("response.completed", {"type": "response.completed", "response": response})
        self.end_stream()


    # ---- Anthropic Messages --------------------------------------------------------------------

    def anthropic_error(self, status, kind, message):
        self.send_json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def anthropic(self, req):
        model = str(req.get("model", ""))
        extra = sorted(k for k in req if k not in ANTHROPIC_FIELDS)
        if extra:
            self.anthropic_error(400, "invalid_request_error",
                                 "%s: Extra inputs are not permitted" % extra[0])
            return
        cap = req.get("max_tokens")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            self.anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
            return
        if not isinstance(req.get("messages"), list) or not req["messages"]:
            self.anthropic_error(400, "invalid_request_error", "messages: Field required")
            return
        prompt = input_tokens({k: v for k, v in req.items() if k not in ANTHROPIC_PARAMS}, model)
        cache_write, cache_read = cache_split(model, req.get("system"), prompt)
        completion = cap
        bill(prompt, completion, cache_write, cache_read)
        uncached = prompt - cache_write - cache_read
        input_side = {"input_tokens": uncached, "cache_creation_input_tokens": cache_write,
                      "cache_read_input_tokens": cache_read}
        output_side = {"output_tokens": completion}
        if "badusage" in model:
            input_side["input_tokens"] = -prompt
            output_side["output_tokens"] = str(completion)
        with_usage = "nousage" not in model
        text = WORD * completion
        message = {"id": "msg_x", "type": "message", "role": "assistant", "model": model,
                   "content": [{"type": "text", "text": text}], "stop_reason": "max_tokens",
                   "stop_sequence": None}
        half = "halfusage" in model
        if req.get("stream") is not True:
            if with_usage:
                message["usage"] = dict(input_side, **({} if half else output_side))
            self.send_json(200, message)
            return
        self.start_stream()

        def event(name, obj):
            self.chunk("event: %s\ndata: %s\n\n" % (name, json.dumps(dict(obj, type=name))))

        started = dict(message, content=[], stop_reason=None)
        if with_usage:
            # The input side first; the output count so far is 1, the final one comes last.
            started["usage"] = dict(input_side, output_tokens=1)
        event("message_start", {"message": started})
        event("ping", {})
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for piece in pieces(text):
            event("content_block_delta", {"index": 0,
                                          "delta": {"type": "text_delta", "text": piece}})
        if "cutoff" in model:  # the stream breaks here: every token was generated and billed
            self.end_stream()
            return
        event("content_block_stop", {"index": 0})
        delta = {"delta": {"stop_reason": "max_tokens", "stop_sequence": None}}
        if with_usage and not half:
            delta["usage"] = dict(output_side)
            if cache_write or cache_read:
                # message_delta's usage is cumulative and may repeat any input-side count: here
                # the uncached input alone (the cache counts stand as message_start said).
                delta["usage"]["input_tokens"] = input_side["input_tokens"]
        event("message_delta", delta)
        event("message_stop", {})
        self.end_stream()

    # ---- Gemini --------------------------------------------------------------------------------

    def gemini(self, req, model, method):
        if method not in ("generateContent", "streamGenerateContent"):
            self.send_json(404, {"error": {"code": 404, "message": "unknown method " + method,
                                           "status": "NOT_FOUND"}})
            return
        if not isinstance(req.get("contents"), list) or not req["contents"]:
            self.send_json(400, {"error": {"code": 400, "message": "contents is not specified",
                                           "status": "INVALID_ARGUMENT"}})
            return
        config = req.get("generationConfig") or {}
        billable = {k: v for k, v in req.items() if k != "generationConfig"}
        schemas = {k: v for k, v in config.items() if k in GEMINI_TEXT_CONFIG}
        if schemas:
            billable["generationConfig"] = schemas
        prompt = input_tokens(billable, model)
        tool_prompt = 100 if "tooluse" in model else 0
        _, cached = cache_split(model, req.get("systemInstruction"), prompt)
        per_candidate = int(config.get("maxOutputTokens") or 8192)
        candidates = int(config.get("candidateCount") or 1)
        thoughts = per_candidate // 2 if "think" in model else 0
        visible = per_candidate - thoughts  # thoughts count against maxOutputTokens
        bill(prompt + tool_prompt, per_candidate * candidates, 0, cached)
        final = {"promptTokenCount": prompt, "candidatesTokenCount": visible * candidates,
                 "totalTokenCount": prompt + tool_prompt + per_candidate * candidates}
        if cached:
            final["cachedContentTokenCount"] = cached
        if thoughts:
            final["thoughtsTokenCount"] = thoughts * candidates
        if tool_prompt:
            final["toolUsePromptTokenCount"] = tool_prompt
        if "badusage" in model:
            final["promptTokenCount"] = -prompt
            final["candidatesTokenCount"] = str(visible * candidates)
        if "halfusage" in model:
            final.pop("candidatesTokenCount")
            final.pop("thoughtsTokenCount", None)
        with_usage = "nousage" not in model
        text = WORD * visible

        def candidate(i, piece, finish):
            c = {"content": {"role": "model", "parts": [{"text": piece}]}, "index": i}
            if finish:
                c["finishReason"] = "MAX_TOKENS"
            return c

        if method == "generateContent":
            answer = {"candidates": [candidate(i, text, True) for i in range(candidates)],
                      "modelVersion": model, "responseId": "resp-x"}
            if with_usage:
                answer["usageMetadata"] = final
            self.send_json(200, answer)
            return
        self.start_stream()

        def send(obj):
            self.chunk("data: " + json.dumps(obj) + "\r\n\r\n")

        late = "lateusage" in model
        cutoff = "cutoff" in model
        for i in range(candidates):
            parts = pieces(text)
            for k, piece in enumerate(parts):
                last = k == len(parts) - 1 and not cutoff
                chunk = {"candidates": [candidate(i, piece, last)], "modelVersion": model,
                         "responseId": "resp-x"}
                if with_usage:
                    # Every chunk carries usageMetadata; the counts are final in the last one.
                    done = last and i == candidates - 1 and not late
                    chunk["usageMetadata"] = final if done else {
                        "promptTokenCount": prompt, "totalTokenCount": prompt}
                send(chunk)
        if with_usage and late and not cutoff:
            send({"usageMetadata": final, "modelVersion": model, "responseId": "resp-x"})
        self.end_stream()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
