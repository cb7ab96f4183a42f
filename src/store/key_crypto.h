#pragma once
// Hashing, signing and secret generation for API keys and webhooks (OpenSSL). Thread-safe: pure
// functions over OpenSSL's thread-safe primitives.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace bw::store {

// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);
// The stored form of an API key secret: sha256_hex(secret). Used for config-file keys too, so a
// config may list hashes instead of secrets.
std::string hash_key(std::string_view secret);
// Constant-time equality (CRYPTO_memcmp); lengths are compared first (not secret: hashes are fixed
// length).
bool constant_time_equal(std::string_view a, std::string_view b);
// Lower-case hex HMAC-SHA256(secret, body).
std::string hmac_sha256_hex(std::string_view secret, std::string_view body);

// `n` characters from the URL-safe alphabet [A-Za-z0-9_-] using RAND_bytes (uniform: 64 symbols
// divide 256). nullopt if the CSPRNG fails (never fall back to a weak source).
std::optional<std::string> random_url_safe(std::size_t n);
// "bw-" + 32 URL-safe characters (192 bits of entropy).
std::optional<std::string> generate_secret();
// Public key id: "key_" + 12 lower-case alphanumerics.
std::optional<std::string> generate_key_id();

}  // namespace bw::store
