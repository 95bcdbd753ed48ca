// Helpers shared by the CPU kernels: storage types, float conversion, dtype dispatch.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace i3d {

// bfloat16 storage: the upper 16 bits of an IEEE float.
struct bf16 {
  uint16_t bits;
};

using f16 = _Float16;

// Storage -> accumulation type (double stays double).
inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }
inline float to_float(f16 v) { return static_cast<float>(v); }
inline float to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Accumulation type -> storage (round to nearest even).
template <typename T, typename A>
inline T from_float(A v) { return static_cast<T>(v); }
template <>
inline bf16 from_float<bf16, float>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// Accumulation type: double for double, float for everything else.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

enum class DType { f32, f64, f16, bf16 };

inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::f32;
  if (name == "float64") return DType::f64;
  if (name == "float16") return DType::f16;
  if (name == "bfloat16") return DType::bf16;
  throw std::invalid_argument("i3d_fast._C: unsupported dtype '" + name +
                              "' (expected float32, float64, float16 or bfloat16)");
}

// Calls fn(T{}) with T the storage type named by `dtype`.
template <typename Fn>
inline void dispatch_float(const std::string& dtype, Fn&& fn) {
  switch (parse_dtype(dtype)) {
    case DType::f32: fn(float{}); break;
    case DType::f64: fn(double{}); break;
    case DType::f16: fn(f16{}); break;
    case DType::bf16: fn(bf16{}); break;
  }
}

template <typename T>
inline T* as_ptr(uintptr_t address) { return reinterpret_cast<T*>(address); }

}  // namespace i3d
