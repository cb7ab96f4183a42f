#!/usr/bin/env python3
"""A provider-like upstream that bills the way real providers bill, for the budget tests.

- It parses the body with Python's json module, which keeps the LAST of two duplicate keys (as
  Go's and JavaScript's parsers do): a gateway that read the first one would be fooled.
- It bills every input token: all text of the request (messages, tools, schemas, tool calls and
  results, every other field), at 4 characters a token, plus 765 tokens per image.
- It generates every choice (n, or max(n, best_of)), each the full max_tokens (or 4096 without
  one), and bills them all.
- A model whose name contains "nousage" answers without usage (buffered and streamed); one
  whose name contains "badusage" reports usage with counts a strict reader must not trust: the
  completion count as a string, the prompt count negative.
- GET /billed returns the running total: {"requests", "prompt_tokens", "completion_tokens"}.

Usage: billing_upstream.py PORT
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
BILLED = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}


# Keys that frame a message rather than carry text the model reads.
FRAMING = {"role", "content", "type", "text"}
# Parameters that are not text.
PARAMS = {"model", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
          "max_output_tokens", "store",
          "best_of", "temperature", "top_p", "seed", "user", "metadata", "stop", "logit_bias"}


def text_chars(v):
    if isinstance(v, str):
        return len(v)
    if isinstance(v, dict):
        n = 0
        for k, x in v.items():
            if k == "image_url" or k == "role":
                continue
            n += (0 if k in FRAMING else len(k)) + text_chars(x)
        return n
    if isinstance(v, list):
        return sum(text_chars(x) for x in v)
    return len(json.dumps(v))


def images(v):
    if isinstance(v, dict):
        image = v.get("type") in ("image_url", "input_image")
        return (1 if image else 0) + sum(images(x) for x in v.values())
    if isinstance(v, list):
        return sum(images(x) for x in v)
    return 0


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

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        try:
            req = json.loads(raw)  # duplicate keys: the last one wins
        except ValueError:
            self.send_json(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        model = str(req.get("model", ""))
        billable = {k: v for k, v in req.items() if k not in PARAMS}
        prompt = (text_chars(billable) + 3) // 4 + 765 * images(billable) + 3
        responses = self.path.endswith("/responses")
        per_choice = (req.get("max_output_tokens") if responses else
                      req.get("max_completion_tokens") or req.get("max_tokens")) or 4096
        choices = max(int(req.get("n") or 1), int(req.get("best_of") or 1))
        completion = int(per_choice) * choices
        with LOCK:
            BILLED["requests"] += 1
            BILLED["prompt_tokens"] += prompt
            BILLED["completion_tokens"] += completion
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        with_usage = "nousage" not in model
        if "badusage" in model:
            usage = {"prompt_tokens": -prompt, "completion_tokens": str(completion),
                     "total_tokens": str(prompt + completion)}
        word = "tok "
        if responses:
            self.answer_responses(req, model, prompt, completion, usage, with_usage, word)
            return
        if req.get("stream") is True:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

            def chunk(s):
                b = s.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))

            for i in range(choices):
                ev = {"id": "x", "object": "chat.completion.chunk", "model": model,
                      "choices": [{"index": i, "delta": {"content": word * int(per_choice)}}]}
                chunk("data: " + json.dumps(ev) + "\n\n")
            if with_usage:
                chunk("data: " + json.dumps({"id": "x", "choices": [], "usage": usage}) + "\n\n")
            chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        answer = {"id": "x", "object": "chat.completion", "model": model,
                  "choices": [{"index": i, "finish_reason": "length",
                               "message": {"role": "assistant", "content": word * int(per_choice)}}
                              for i in range(choices)]}
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
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def event(name, obj):
            b = ("event: %s\ndata: %s\n\n" % (name, json.dumps(obj))).encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))

        started = dict(response, status="in_progress", output=[])
        started.pop("usage", None)
        event("response.created", {"type": "response.created", "response": started})
        event("response.output_text.delta",
              {"type": "response.output_text.delta", "item_id": "msg_x", "output_index": 0,
               "content_index": 0, "delta": text})
        event("response.completed", {"type": "response.completed", "response": response})
        self.wfile.write(b"0\r\n\r\n")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
