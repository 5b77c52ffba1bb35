// Decode allocates nothing once warm: the forward pass of a step (model, CPU backend on every
// kernel path this machine has, dense and block formats) and the sampler. A binary of its own,
// since it replaces the global operator new with one that counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>

#include "backends/cpu/cpu_backend.h"
#include "model/deepseek.h"
#include "model/quantize.h"
#include "sampling/sampler.h"
#include "tests/test_util.h"

namespace {

std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};

void* counted(std::size_t n) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}

void* counted_aligned(std::size_t n, std::align_val_t align) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  const auto a = static_cast<std::size_t>(align);
  if (void* p = std::aligned_alloc(a, (std::max<std::size_t>(n, 1) + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}

// Counts the allocations (on every thread) while it lives.
class AllocationCounter {
 public:
  AllocationCounter() {
    allocations = 0;
    counting = true;
  }
  ~AllocationCounter() { counting = false; }
  int64_t count() const { return allocations.load(); }
};

}  // namespace

void* operator new(std::size_t n) { return counted(n); }
void* operator new[](std::size_t n) { return counted(n); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_aligned(n, a); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return counted(n);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace whale {
namespace {

struct Case {
  cpu::Isa isa;
  model::QuantRecipe recipe;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string name =
      std::string(cpu::isa_name(info.param.isa)) + "_" + model::recipe_name(info.param.recipe);
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

std::vector<Case> all_cases() {
  std::vector<Case> out;
  for (cpu::Isa isa : cpu::supported_isas()) {
    for (auto r : {model::QuantRecipe::kBf16, model::QuantRecipe::kQ8, model::QuantRecipe::kQ4})
      out.push_back({isa, r});
  }
  return out;
}

class DecodeAllocations : public ::testing::TestWithParam<Case> {};

TEST_P(DecodeAllocations, StepAllocatesNothingOnceWarm) {
  ThreadPool pool(2);
  test::TempDir tmp;
  const std::string dir = tmp.file("model");
  ASSERT_TRUE(
      model::quantize_checkpoint(test::fixture_dir("v3_yarn"), dir, GetParam().recipe, pool, {})
          .ok());
  auto m = model::Model::load(dir);
  ASSERT_TRUE(m.ok()) << m.error().to_string();
  cpu::CpuBackend cpu(pool, GetParam().isa);
  const std::vector<int32_t> prompt = test::fixture_ids("v3_yarn");
  ASSERT_GE(prompt.size(), 8u);
  for (const model::KvType kv : {model::KvType::kF32, model::KvType::kBf16}) {
    SCOPED_TRACE(std::string(model::kv_type_name(kv)) + " cache");
    model::KvCache cache(m->config(), 64, kv);
    std::vector<float> logits;
    auto step = [&](std::span<const int32_t> ids) {
      return m->forward(cpu, ids, cache, &logits).ok();
    };
    auto argmax = [&] {
      return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    };
    // A first sequence takes every buffer to the sizes of a context of 48; the second then
    // runs in them, each step counted.
    ASSERT_TRUE(step(std::span(prompt).first(8)));
    for (int t = 0; t < 40; ++t) {
      const int32_t id = argmax();
      ASSERT_TRUE(step(std::span(&id, 1)));
    }
    cache.clear();
    ASSERT_TRUE(step(std::span(prompt).first(8)));
    for (int t = 0; t < 30; ++t) {
      const int32_t id = argmax();
      AllocationCounter counter;
      ASSERT_TRUE(step(std::span(&id, 1)));
      ASSERT_EQ(counter.count(), 0) << "decode step " << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, DecodeAllocations, ::testing::ValuesIn(all_cases()), case_name);

TEST(SamplerAllocations, DrawAllocatesNothingAfterTheFirst) {
  sampling::SamplingParams p;
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  p.top_k = 40;
  p.min_p = 0.01f;
  p.repetition_penalty = 1.1f;
  p.frequency_penalty = 0.2f;
  p.presence_penalty = 0.1f;
  p.seed = 7;
  constexpr int64_t kVocab = 1000;
  sampling::Sampler sampler(p, kVocab);
  const std::vector<int32_t> prompt = {1, 5, 9, 5};
  std::vector<float> logits(kVocab);
  auto fill = [&](int step) {
    for (int64_t i = 0; i < kVocab; ++i)
      logits[static_cast<size_t>(i)] = float((i * 37 + step * 11) % 101) / 10.0f;
  };
  fill(0);
  sampler.sample(logits, prompt);
  for (int step = 1; step < 50; ++step) {
    fill(step);
    AllocationCounter counter;
    const int32_t id = sampler.sample(logits, prompt);
    ASSERT_EQ(counter.count(), 0) << "draw " << step;
    ASSERT_GE(id, 0);
    ASSERT_LT(id, kVocab);
  }
}

TEST(SamplerAllocations, CounterSeesAnAllocation) {
  // The test above would pass with a counter that never counts.
  AllocationCounter counter;
  auto* v = new std::vector<int>(100);
  const int64_t seen = counter.count();
  delete v;
  EXPECT_GE(seen, 2);
}

}  // namespace
}  // namespace whale
