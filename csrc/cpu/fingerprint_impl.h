// Fingerprint of a block of memory (included by kernels_impl.h, inside
// namespace rnnfast::cpu::CPU_CAPABILITY): what the panel cache
// (panel_cache.h) compares to learn whether a weight changed since its panels
// were packed, so it must read memory at close to the cache's bandwidth.
//
// 32 lanes of 32-bit words (four vectors of GCC's vector extension: AVX2
// registers in that build, pairs of SSE2 registers elsewhere), each a chain
// lane = rotl(lane ^ word, 13) * odd constant over its words in order, then
// the lanes and the length folded into 64 bits. Every step of a lane's chain
// and of the fold is a bijection of the state, so a change confined to one
// lane is always seen; changes in several lanes collide with probability
// ~2^-64. The value is the same in every build (integer arithmetic).
#pragma once

typedef uint32_t FingerprintLanes __attribute__((vector_size(32)));

inline uint64_t fingerprint(const void* p, int64_t bytes) {
  constexpr int V = 4;  // vectors of 8 lanes
  FingerprintLanes lane[V];
  for (int v = 0; v < V; ++v)
    for (int j = 0; j < 8; ++j) lane[v][j] = 0x811C9DC5u + uint32_t(8 * v + j) * 0x01000193u;
  auto mix = [&](const uint8_t* src) {
    for (int v = 0; v < V; ++v) {
      FingerprintLanes w;
      std::memcpy(&w, src + 32 * v, 32);
      const FingerprintLanes x = lane[v] ^ w;
      lane[v] = ((x << 13) | (x >> 19)) * 0x9E3779B1u;
    }
  };
  const uint8_t* b = static_cast<const uint8_t*>(p);
  int64_t i = 0;
  for (; i + 32 * V <= bytes; i += 32 * V) mix(b + i);
  if (i < bytes) {  // the last words zero-padded (the length is folded in below)
    alignas(32) uint8_t tail[32 * V] = {0};
    std::memcpy(tail, b + i, size_t(bytes - i));
    mix(tail);
  }
  uint64_t h = 0xCBF29CE484222325ull ^ uint64_t(bytes);
  for (int v = 0; v < V; ++v)
    for (int j = 0; j < 8; ++j) {
      h = (h ^ lane[v][j]) * 0x100000001B3ull;
      h ^= h >> 29;
    }
  return h;
}
