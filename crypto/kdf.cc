#include "crypto/kdf.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cstdio>
#include <cstdlib>
#include <memory>

namespace pohmelfs::crypto {
namespace {

struct MacCtxFree {
  void operator()(EVP_MAC_CTX* c) const { EVP_MAC_CTX_free(c); }
};
struct KdfCtxFree {
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};

// Fetched once per process: an explicit fetch avoids a provider lookup (and its lock) on every
// call. Kept for the life of the process (held from a static, so leak checkers see it as
// reachable).
EVP_MAC* HmacAlgorithm() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr);
  return mac;
}
EVP_KDF* HkdfAlgorithm() {
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr);
  return kdf;
}

// The OpenSSL error queue of this thread as text (and cleared), for the Status reason.
std::string OpenSslError(const char* what) {
  std::string s = what;
  unsigned long e = ERR_get_error();
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    s += ": ";
    s += buf;
  }
  ERR_clear_error();
  return s;
}

}  // namespace

Status HmacSha256(std::span<const uint8_t> key,
                  std::initializer_list<std::span<const uint8_t>> parts,
                  std::span<uint8_t, kSha256Bytes> out) {
  EVP_MAC* mac = HmacAlgorithm();
  if (mac == nullptr) return Status::Error(EIO, OpenSslError("EVP_MAC_fetch HMAC"));
  std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(EVP_MAC_CTX_new(mac));
  if (!ctx) return Status::Error(ENOMEM, OpenSslError("EVP_MAC_CTX_new"));
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  // An empty key is legal HMAC; give OpenSSL a valid pointer for it.
  static const uint8_t kEmpty = 0;
  const uint8_t* k = key.empty() ? &kEmpty : key.data();
  if (EVP_MAC_init(ctx.get(), k, key.size(), params) != 1) {
    return Status::Error(EIO, OpenSslError("EVP_MAC_init HMAC-SHA256"));
  }
  for (std::span<const uint8_t> p : parts) {
    if (!p.empty() && EVP_MAC_update(ctx.get(), p.data(), p.size()) != 1) {
      return Status::Error(EIO, OpenSslError("EVP_MAC_update"));
    }
  }
  size_t len = 0;
  if (EVP_MAC_final(ctx.get(), out.data(), &len, out.size()) != 1 || len != out.size()) {
    return Status::Error(EIO, OpenSslError("EVP_MAC_final"));
  }
  return Status::Ok();
}

Sha256Digest HmacSha256(std::span<const uint8_t> key,
                        std::initializer_list<std::span<const uint8_t>> parts) {
  Sha256Digest d{};
  Status st = HmacSha256(key, parts, d);
  if (!st.ok()) {
    std::fprintf(stderr, "pohmelfs: fatal: HMAC-SHA256 failed: %s\n", st.ToString().c_str());
    std::abort();
  }
  return d;
}

Status HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                  std::span<const uint8_t> info, std::span<uint8_t> out) {
  if (ikm.empty()) return Status::Error(EINVAL, "HKDF: empty input key material");
  if (out.empty() || out.size() > 255 * kSha256Bytes) {
    return Status::Error(EINVAL, "HKDF: output length out of range");
  }
  EVP_KDF* kdf = HkdfAlgorithm();
  if (kdf == nullptr) return Status::Error(EIO, OpenSslError("EVP_KDF_fetch HKDF"));
  std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(EVP_KDF_CTX_new(kdf));
  if (!ctx) return Status::Error(ENOMEM, OpenSslError("EVP_KDF_CTX_new"));
  char digest[] = "SHA256";
  // OSSL_PARAM wants non-const pointers; OpenSSL only reads (copies) these inputs.
  auto octets = [](const char* name, std::span<const uint8_t> s) {
    return OSSL_PARAM_construct_octet_string(name, const_cast<uint8_t*>(s.data()), s.size());
  };
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = octets(OSSL_KDF_PARAM_KEY, ikm);
  // An absent salt is the RFC's default (HashLen zeros); an empty info is simply omitted.
  if (!salt.empty()) params[n++] = octets(OSSL_KDF_PARAM_SALT, salt);
  if (!info.empty()) params[n++] = octets(OSSL_KDF_PARAM_INFO, info);
  params[n] = OSSL_PARAM_construct_end();
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return Status::Error(EIO, OpenSslError("EVP_KDF_derive HKDF-SHA256"));
  }
  return Status::Ok();
}

bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  // Lengths are public (a MAC's length is fixed by the mode), so comparing them first leaks
  // nothing secret.
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace pohmelfs::crypto
