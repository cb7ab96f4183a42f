#include "store/key_crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <vector>

namespace bw::store {

namespace {

std::string to_hex(const unsigned char* p, std::size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (std::size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[p[i] >> 4];
    out[2 * i + 1] = kHex[p[i] & 0xf];
  }
  return out;
}

}  // namespace

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return to_hex(md, len);
}

std::string hash_key(std::string_view secret) {
  return sha256_hex(secret);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string hmac_sha256_hex(std::string_view secret, std::string_view body) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(body.data()), body.size(), md, &len);
  return to_hex(md, len);
}

std::optional<std::string> random_url_safe(std::size_t n) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::vector<unsigned char> bytes(n);
  if (n > 0 && RAND_bytes(bytes.data(), static_cast<int>(n)) != 1) return std::nullopt;
  std::string out(n, 'A');
  for (std::size_t i = 0; i < n; ++i) out[i] = kAlphabet[bytes[i] & 63];
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return out;
}

std::optional<std::string> generate_secret() {
  auto body = random_url_safe(32);
  if (!body) return std::nullopt;
  return "bw-" + *body;
}

std::optional<std::string> generate_key_id() {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";  // 36 symbols
  std::string out = "key_";
  while (out.size() < 16) {
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1) return std::nullopt;
    for (unsigned char c : b) {
      // Rejection sampling keeps the 36 symbols uniform (252 = 7 * 36).
      if (c < 252 && out.size() < 16) out.push_back(kAlphabet[c % 36]);
    }
  }
  return out;
}

}  // namespace bw::store
