// A non-owning view of an n-dimensional array: shape, strides, dtype and a pointer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace whale {

struct TensorView {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  std::vector<int64_t> shape;    // outermost dimension first
  std::vector<int64_t> strides;  // in elements, same rank as shape

  // A row-major view with the given shape.
  static TensorView contiguous(DType dtype, const void* data, std::vector<int64_t> shape);

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int64_t numel() const;
  int64_t nbytes() const { return numel() * dtype_size(dtype); }
  bool is_contiguous() const;
  template <class T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

// "[2, 3, 4]"
std::string shape_to_string(const std::vector<int64_t>& shape);

}  // namespace whale
