// UTF-8 helpers: validation, lossy repair, code point iteration.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace whale::tok {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if the bytes there are not one
// (overlong forms, surrogates and code points past U+10FFFF are invalid, as in the standard).
int utf8_sequence_length(std::string_view s, size_t i);

bool is_valid_utf8(std::string_view s);

// Replaces every invalid byte sequence with U+FFFD, as Rust's from_utf8_lossy (and so HF
// tokenizers) does: one replacement per maximal invalid prefix.
std::string repair_utf8(std::string_view s);

// Length of the longest prefix of s that does not end inside an incomplete (but so far valid)
// UTF-8 sequence: the bytes after it may still become a character.
size_t complete_utf8_prefix(std::string_view s);

void append_utf8(std::string& out, uint32_t cp);

// Decodes the code point at s[i] (which must start a valid sequence); advances i.
uint32_t next_code_point(std::string_view s, size_t& i);

}  // namespace whale::tok
