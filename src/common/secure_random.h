#pragma once
// Random bytes from the kernel's CSPRNG (getrandom), for values that must not be guessable: ids
// that grant access to stored data (a stored response's id). Request and trace ids are not
// secrets and keep their cheaper generators.
//
// Each thread draws from its own buffer, refilled kSecureRandomBlock bytes at a time, so an id
// costs no system call in the common case. The kernel's answer is the only source: there is no
// fallback to a seeded PRNG. If neither getrandom nor /dev/urandom can be read the process aborts,
// because an id that looks random but is predictable would be worse than no answer.
//
// Thread safety: every function may be called from any thread (the buffer is thread_local).
// A process that forks without exec must not draw from the same buffer in both parents and
// children (the gateway never does).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace bw {

inline constexpr std::size_t kSecureRandomBlock = 256;

// `n` bytes straight from the kernel (no buffer).
void secure_random_fill(void* out, std::size_t n);

// One uniformly random byte from this thread's buffer.
std::uint8_t secure_random_byte();

// `n` characters drawn uniformly from [0-9a-zA-Z], appended to `out` (rejection sampling: a byte
// of 248 or more is drawn again, so no character is likelier than another).
void append_secure_alnum(std::string& out, std::size_t n);

}  // namespace bw
