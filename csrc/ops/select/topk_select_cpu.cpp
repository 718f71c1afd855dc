// datadiet::topk_select on CPU: ordered keys of the scores straight from memory
// (fp16/bf16 widened to float), selected by the shared radix engine.
#include "common/dispatch.h"
#include "ops/select/radix_select_cpu.h"
#include "ops/select/select.h"
#include "ops/select/select_math.h"

namespace datadiet {
namespace {

template <typename T>
void select_typed(const StableTensor& values, const std::vector<int64_t>& offsets, const std::vector<int64_t>& ks,
                  bool largest, int64_t* out) {
  const T* v = values.const_data_ptr<T>();
  const auto key_at = [v, largest](int64_t i) { return sel::ordered_key(static_cast<float>(v[i]), largest); };
  sel::select_segments(key_at, offsets, ks, out);
}

}  // namespace

StableTensor topk_select_cpu(const StableTensor& values, std::vector<int64_t> offsets, std::vector<int64_t> ks,
                             bool largest) {
  const int64_t total = check_segments("topk_select", "scores", values, offsets, ks);
  StableTensor out = torch::stable::new_empty(values, {total}, ScalarType::Long);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  dispatch_float(values.scalar_type(),
                 [&](auto tag) { select_typed<decltype(tag)>(values, offsets, ks, largest, o); });
  return out;
}

}  // namespace datadiet
