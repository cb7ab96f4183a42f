#pragma once
// inspect_chunk's answer for the common shape of an OpenAI stream event without a JSON parse:
// one pass that checks the event is valid JSON and measures the text on the way. Anything
// outside that shape is left to the parse, so the two always agree.
// Thread safety: a pure function.
#include <cstddef>
#include <optional>
#include <string_view>

#include "providers/openai.h"

namespace bw::providers {

// The ChunkInfo that a full parse of `data` gives, or nullopt when `data` needs that parse: an
// event whose first "usage" value is an object, whose root is not an object, that is not valid
// JSON, or that is unusual (a duplicate or escaped key where the answer is read, a lone
// surrogate escape, an unescaped control character, a number with many digits, deep nesting,
// a very large event). "[DONE]" and empty data are inspect_chunk's own cases, not this one's.
std::optional<ChunkInfo> scan_chunk(std::string_view data);
// scan_chunk that also reads a "usage" object as parse_chunk does (prompt_tokens,
// completion_tokens, prompt_tokens_details.cached_tokens and
// completion_tokens_details.reasoning_tokens, each an integer written once; anything else there
// is left to the parse): the last event of a stream, which carries the usage, is read without a
// parse too.
std::optional<ChunkInfo> scan_chunk_with_usage(std::string_view data);
// The same for the events of one stream, which begin alike: the bytes before the first member
// that is read ("choices" or "usage"; the id, object, created and model before it) are
// remembered from the last event that needed them, and an event that begins with exactly those
// bytes is scanned from there, in the state that scanning them leaves.
std::optional<ChunkInfo> scan_chunk_with_usage(std::string_view data, ChunkPrefix& prefix);
// parse_answer_usage's answer for a buffered (non-streamed) answer, read the same way without a
// parse: the whole body is checked to be valid JSON, only the top-level "usage" is read. nullopt
// when the body needs the parse (the cases above, a large body, usage of 0 output tokens, which
// is not trusted for an answer with output: api::check_output_counted).
std::optional<Usage> scan_answer_usage(std::string_view body, Endpoint endpoint);
// How many answers scan_answer_usage read on this thread from the shape of an earlier answer
// (the same bytes with other values: a few shapes are kept a thread) instead of a scan; for
// the tests.
std::size_t answers_recalled();

}  // namespace bw::providers
